"""Without the ``train`` extra, ``train`` and ``export`` stop at once with the install command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# ``sys.modules[name] = None`` makes ``import name`` raise ImportError: TensorFlow "absent"
# in a child process, without touching the installed package.
_WITHOUT_TF = (
    "import sys\n"
    "sys.modules['tensorflow'] = None\n"
    "sys.modules['keras'] = None\n"
    "from stream.tools.cli import main\n"
    "sys.argv = ['shopscore', *sys.argv[1:]]\n"
    "main()\n"
)


@pytest.mark.parametrize("command", ["train", "export"])
def test_missing_tensorflow_fails_fast_with_the_install_hint(
    command: str, small_log: Path, tmp_path: Path
) -> None:
    args = (
        ["train", "--data", str(small_log), "--out", str(tmp_path / "out")]
        if command == "train"
        else ["export", "--models", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TF, *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "pip install 'shopscore[train]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
