"""`python -m mirror` is the `mirror` command."""

from mirror.cli import main

raise SystemExit(main())
