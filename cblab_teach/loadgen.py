"""``python -m cblab_teach.loadgen``: the load generator (its code lives in ``serve/loadgen_*.py``)."""

from __future__ import annotations

from .serve.loadgen_cli import main

if __name__ == "__main__":
    raise SystemExit(main())
