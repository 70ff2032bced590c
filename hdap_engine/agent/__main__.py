"""`python -m hdap_engine.agent serve ...`: the agent without loading the whole `hdap` CLI."""

from hdap_engine.agent.commands import main

raise SystemExit(main())
