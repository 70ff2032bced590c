"""`python -m hdap_engine.finetune BUNDLE --data ... --out DIR` (torchrun's entry point)."""

from hdap_engine.finetune.commands import main

raise SystemExit(main())
