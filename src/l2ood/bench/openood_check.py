"""``python -m l2ood.bench.openood_check DATA [BENCHMARK ...] [--no-images]``: check a data root in OpenOOD v1.5's
layout for the ``openood-*`` benchmarks without running anything (:func:`l2ood.bench.openood.check_main`)."""

from __future__ import annotations

import sys

from .openood import check_main

if __name__ == "__main__":
    sys.exit(check_main())
