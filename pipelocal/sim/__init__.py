"""A discrete-event simulator of the schedules pipelocal runs (docs/simulator.md)."""
