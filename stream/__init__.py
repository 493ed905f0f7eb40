"""shopscore's streaming service: event contracts, feature state, Faust agents and the CLI.

The pure parts (``events``, ``validation``, ``features``, ``tools.generator``) import no Faust,
so offline training replays exactly the code the workers run.
"""

__version__ = "0.1.0"
