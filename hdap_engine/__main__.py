"""`python -m hdap_engine` is the same as the `hdap` command."""

from hdap_engine.cli import main

raise SystemExit(main())
