"""Paths and timing shared by the benchmark scripts.

The real meshes of the project's ``shared/data`` folder lie beside the checkout (``<checkout>/../shared``);
``MONORECON_SHARED_DATA`` overrides the data folder, as for the tests.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

SHARED_DATA = Path(os.environ.get("MONORECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SHARED_MESHES = SHARED_DATA / "meshes"


def seconds_with_workers(run: Callable[[int], object], workers: int) -> dict[int, float]:
    """Wall seconds of ``run(1)`` (the baseline) and of ``run(workers)``, measured one after the other."""
    seconds = {}
    for count in (1, workers):
        start = time.perf_counter()
        run(count)
        seconds[count] = time.perf_counter() - start
    return seconds


def print_workers_speedup(seconds: dict[int, float], n_items: int, unit: str) -> None:
    """Print the baseline's time (and per ``unit``) and the other count's time with its speed-up."""
    (base, base_seconds), (workers, worker_seconds) = sorted(seconds.items())
    print(f"workers={base} (baseline): {base_seconds:.1f} s ({base_seconds / n_items:.2f} s per {unit})")
    print(f"workers={workers}: {worker_seconds:.1f} s, speed-up x{base_seconds / worker_seconds:.2f}")
