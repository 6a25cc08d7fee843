"""The orchestrator's runtime: engine, Redis store (+ Lua), service, client, registry, config.

`cli/` holds the `saga` command, one module per group of subcommands;
`tools/` the demo, the benchmark and the scale run, which are tooling, not runtime.
"""
