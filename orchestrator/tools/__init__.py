"""Tooling around the orchestrator, not its runtime: demo, benchmark and ring, scale run, fleet of processes."""
