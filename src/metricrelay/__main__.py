"""``python -m metricrelay``: the same program as the ``metricrelay`` console script."""

from metricrelay.cli import main

raise SystemExit(main())
