"""Synthetic data generation: one process (torch's own threads) vs ``workers`` processes of one thread each.

    python benchmarks/bench_synth.py [--n 200] [--workers 2] [--size 128] [--views 8]

Writes the same dataset (seed 3, all classes) twice into a temporary folder, with ``synthesize_dataset(...,
workers=1)`` (the baseline, measured in the same run) and with ``workers=N``, prints the wall seconds of each and
their ratio, and checks that the two folders hold the same files byte for byte.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import print_workers_speedup, seconds_with_workers
from monorecon.data import synthesize_dataset


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="objects")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--views", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:

        def run(workers: int) -> None:
            synthesize_dataset(Path(tmp) / f"w{workers}", args.n, args.views, args.size, 3, workers=workers)

        seconds = seconds_with_workers(run, args.workers)
        same = _files(Path(tmp) / "w1") == _files(Path(tmp) / f"w{args.workers}")
    print(f"{args.n} objects, {args.views} views of {args.size} px")
    print_workers_speedup(seconds, args.n, "object")
    print(f"identical datasets: {same}")


if __name__ == "__main__":
    main()
