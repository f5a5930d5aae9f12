"""``python -m achilles_like``: the same as the ``achilles`` command."""

from __future__ import annotations

import sys

from achilles_like.cli import main

if __name__ == "__main__":
    sys.exit(main())
