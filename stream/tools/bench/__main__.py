"""The child processes of ``shopscore bench``'s baseline phases.

``python -m stream.tools.bench forward TOPIC``: the bare forwarder (phase 2);
``python -m stream.tools.bench consume``: the consume-only agent (phase 3). Both read
``SHOPSCORE_*`` for their settings.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from stream.settings import Settings
from stream.tools.bench.baselines import consume_only_app, forwarder_app, run_app

USAGE = "usage: python -m stream.tools.bench forward TOPIC | consume  (run by shopscore bench)"


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - child entry point
    args = list(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env()
    if len(args) == 2 and args[0] == "forward":
        run_app(lambda: forwarder_app(settings, args[1]), settings.event_loop)
    elif args == ["consume"]:
        run_app(lambda: consume_only_app(settings), settings.event_loop)
    else:
        raise SystemExit(USAGE)


if __name__ == "__main__":  # pragma: no cover
    main()
