"""Command-line tools: CLI, embedded run, replay/publish, dump, bench, generator."""
