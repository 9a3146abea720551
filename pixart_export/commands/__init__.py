"""One module per CLI subcommand; each has `register(subparsers)` and sets `func(args) -> int`."""
