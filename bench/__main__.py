"""``python -m bench``: see ``bench/runner.py`` and ``bench/README.md``."""

from bench.runner import main

raise SystemExit(main())
