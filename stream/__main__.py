"""``python -m stream`` is ``shopscore``."""

from stream.tools.cli import main

main()
