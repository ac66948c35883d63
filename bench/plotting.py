"""Plots for the benchmarks: matplotlib when installed (`pip install -e '.[bench]'`)."""

from __future__ import annotations

import sys
from typing import Any


def pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None (said once on stderr) when
    matplotlib is not installed: the benchmark still writes its JSON."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    return plt
