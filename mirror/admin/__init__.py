"""Commands that work on a data dir directly (gc, ls, rm, prefetch, tag, export, import), whether
or not a server runs on it: they use the same store and metadata store, whose locks and
write-then-rename make them safe alongside one.

Each module adds its subcommands with `add_parsers(commands)`, giving each parser a `run`
default: `run(args, config) -> exit status`. Nothing here imports prometheus-client (only
the server does): `mirror serve` with several workers must import it only after it has set
up multiprocess mode.
"""
