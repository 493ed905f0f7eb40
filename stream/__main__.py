"""``python -m stream`` is ``shopscore``."""

from stream.cli import main

main()
