"""Evaluation: one process (torch's own threads) vs ``workers`` processes of one thread each.

    python benchmarks/bench_eval.py [--n 24] [--workers 2] [--model default|inflation]

Makes ``--n`` synthetic objects (8 views of 128 px, seed 5, all classes) in a temporary folder, evaluates the bundled
model (or a baseline) on them with ``evaluate(..., workers=1)`` (the baseline, measured in the same run) and with
``workers=N``, prints the wall seconds of each with their ratio, and the largest difference between the two reports'
per-case metrics (a worker's products run on one thread, so a model's numbers may differ by float rounding).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from common import print_workers_speedup, seconds_with_workers
from monorecon.api import load_model
from monorecon.data import ViewSampling, synthesize_dataset
from monorecon.eval.harness import evaluate


def _metrics(report: Path) -> list[dict[str, float]]:
    with open(report / "per_object.csv") as f:
        return [
            {key: float(value) for key, value in row.items() if key not in ("object_id", "class", "seconds")}
            for row in csv.DictReader(f)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="objects")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="default", help="'default' (the bundled model), 'inflation' or 'sphere'")
    args = parser.parse_args()
    method = load_model() if args.model == "default" else args.model
    with tempfile.TemporaryDirectory() as tmp:
        sampling = ViewSampling.at_distance(1.9)  # the input camera of the model (`data synth`'s default)
        data = synthesize_dataset(Path(tmp) / "data", args.n, 8, 128, 5, progress=False, sampling=sampling)

        def run(workers: int) -> None:
            evaluate(method, data, Path(tmp) / f"w{workers}", workers=workers, progress=False)

        seconds = seconds_with_workers(run, args.workers)
        one, many = _metrics(Path(tmp) / "w1"), _metrics(Path(tmp) / f"w{args.workers}")
    largest = max(abs(a[key] - b[key]) for a, b in zip(one, many, strict=True) for key in a if a[key] == a[key])
    print(f"{args.n} objects, method {args.model}")
    print_workers_speedup(seconds, args.n, "object")
    print(f"largest difference of a per-case metric: {largest:.2e}")


if __name__ == "__main__":
    main()
