"""The worker: the Faust app, its agent, tables, timers, HTTP views, metrics and runner."""
