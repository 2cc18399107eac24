"""``python -m rerank_cache``: the ``rerank-cache`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
