"""``python -m bench [--smoke] [--repeat N] [--cases ...]``."""

from bench.run import main

raise SystemExit(main())
