"""The log in file order and its ground truth: in memory, or streamed to disk in sorted runs."""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from stream.tools.generator.catalogue import PRICE_MEDIAN, Context
from stream.tools.generator.config import CATEGORIES, SEC, GeneratorConfig, ms_to_iso, truth_path
from stream.tools.generator.dirt import DEFECTS, copy_event, make_bad
from stream.tools.generator.rand import Rand
from stream.tools.generator.users import User

__all__ = ["generate_events", "write_log"]

_BLOCK_USERS = 5_000  # users per sorted run in write_log; bounds memory for large logs


Record = tuple[int, str, dict[str, Any]]  # (arrival key, event_id, event)


@dataclass
class _Totals:
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    iso: int = 0


def _user_records(
    u: int, ctx: Context, totals: _Totals, users: dict[str, Any], invalid: list[dict[str, Any]]
) -> list[Record]:
    """All records of one user (valid, duplicate, invalid), in no particular order."""
    cfg = ctx.config
    user = User(u, ctx).run()
    users[user.uid] = user.truth()
    valid = user.events
    totals.valid += len(valid)
    records: list[Record] = [(ev["ts"], ev["event_id"], ev) for ev in valid]
    if cfg.bad_fraction > 0:
        r = Rand(cfg.seed, 2, u)
        n_bad = 0
        for ev in valid:
            if r.random() < cfg.bad_fraction:
                defect = DEFECTS[r.below(len(DEFECTS))]
                bad, detail = make_bad(r, ev, defect)
                bad["event_id"] = eid = f"{user.uid}-x{n_bad:05d}"
                n_bad += 1
                records.append((ev["ts"] + 1 + r.below(999), eid, bad))
                invalid.append({"event_id": eid, "defect": defect, "detail": detail})
        totals.invalid += n_bad
    if cfg.iso_fraction > 0:
        r = Rand(cfg.seed, 3, u)
        for ev in valid:
            if r.random() < cfg.iso_fraction:
                ev["ts"] = ms_to_iso(ev["ts"])
                totals.iso += 1
    if cfg.duplicate_fraction > 0:
        r = Rand(cfg.seed, 4, u)
        for key, eid, ev in records[: len(valid)]:
            if r.random() < cfg.duplicate_fraction:
                records.append((key + SEC + r.below(119 * SEC), eid, copy_event(ev)))
                totals.duplicates += 1
    return records


def _truth(
    ctx: Context, users: dict[str, Any], invalid: list[dict[str, Any]], totals: _Totals
) -> dict[str, Any]:
    cat = ctx.catalogue
    return {
        "version": 1,
        "config": ctx.config.as_dict(),
        "start_ms": ctx.start_ms,
        "end_ms": ctx.end_ms,
        "change_day": ctx.config.change_day,
        "change_ts": ctx.change_ts,
        "catalogue": {
            "categories": list(CATEGORIES),
            "items": cat.n_items,
            "items_per_category": {
                n: len(ids) for n, ids in zip(CATEGORIES, cat.item_ids, strict=True)
            },
            "median_price": dict(zip(CATEGORIES, PRICE_MEDIAN, strict=True)),
        },
        "valid_events": totals.valid,
        "invalid": invalid,
        "duplicates": totals.duplicates,
        "iso_timestamps": totals.iso,
        "users": users,
    }


def generate_events(config: GeneratorConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All events in file order (valid ones by (ts, event_id), dirt mixed in) and the truth.

    Holds the whole log in memory; ``write_log`` streams large logs instead.
    """
    ctx = Context.of(config)
    totals = _Totals()
    users: dict[str, Any] = {}
    invalid: list[dict[str, Any]] = []
    records: list[Record] = []
    for u in range(config.users):
        records.extend(_user_records(u, ctx, totals, users, invalid))
    records.sort(key=lambda rec: (rec[0], rec[1]))
    return [rec[2] for rec in records], _truth(ctx, users, invalid, totals)


def _sorted_lines(records: list[Record]) -> list[bytes]:
    """Lines prefixed with a fixed-width key: byte order == (key, event_id) order, so sorted
    runs merge with plain line comparison. (key, event_id) is unique, so the order is total."""
    lines = [b"%015d\t%s\t%s\n" % (key, eid.encode(), orjson.dumps(ev)) for key, eid, ev in records]
    lines.sort()
    return lines


def _strip(lines: Iterator[bytes]) -> Iterator[bytes]:
    for line in lines:
        yield line.split(b"\t", 2)[2]


def write_log(
    config: GeneratorConfig,
    out: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the JSONL log and its truth file; memory stays bounded by sorting blocks of users
    into temporary runs beside ``out`` and merging them."""
    out = Path(out)
    tpath = truth_path(out)
    ctx = Context.of(config)
    totals = _Totals()
    users: dict[str, Any] = {}
    invalid: list[dict[str, Any]] = []
    n_users = config.users
    n_lines = 0

    def block(lo: int, hi: int) -> list[bytes]:
        records: list[Record] = []
        for u in range(lo, hi):
            records.extend(_user_records(u, ctx, totals, users, invalid))
        return _sorted_lines(records)

    bounds = [(lo, min(lo + _BLOCK_USERS, n_users)) for lo in range(0, n_users, _BLOCK_USERS)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(bounds) <= 1:
        lines = block(0, n_users)
        with out.open("wb") as fh:
            fh.writelines(_strip(iter(lines)))
        n_lines = len(lines)
        if progress is not None:
            progress(n_users, n_users)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shopscore-gen-") as tmp:
            runs = []
            for k, (lo, hi) in enumerate(bounds):
                run = Path(tmp) / f"run{k:05d}"
                lines = block(lo, hi)
                with run.open("wb") as fh:
                    fh.writelines(lines)
                n_lines += len(lines)
                runs.append(run)
                del lines
                if progress is not None:
                    progress(hi, n_users)
            handles = [run.open("rb", buffering=1 << 16) for run in runs]
            try:
                with out.open("wb") as fh:
                    fh.writelines(_strip(heapq.merge(*handles)))
            finally:
                for handle in handles:
                    handle.close()
    tpath.write_bytes(orjson.dumps(_truth(ctx, users, invalid, totals), option=orjson.OPT_INDENT_2))
    return {
        "events": n_lines,
        "valid_events": totals.valid,
        "invalid_events": totals.invalid,
        "duplicates": totals.duplicates,
        "iso_timestamps": totals.iso,
        "users": n_users,
        "start_ms": ctx.start_ms,
        "end_ms": ctx.end_ms,
        "log": str(out),
        "truth": str(tpath),
    }
