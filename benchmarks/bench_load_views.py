"""Memory of the training view bank: resident memory added by loading a dataset, against the bank's own size.

    python benchmarks/bench_load_views.py [--n 300]

Synthesises ``--n`` objects (8 views of 128 px) in a temporary folder, loads them as ``monorecon train`` does
(``_load_views``: every view as uint8 in one tensor) in a fresh process and prints the bank's size, the resident
memory that loading added to that process, and their ratio (1: no overhead). Before session 19 the loader kept each
object's tensors, which pinned the reader's freed buffers: 5-13x the bank (docs/results.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from monorecon.api import DEFAULT_MODEL_DIR
from monorecon.data import ViewSampling, synthesize_dataset
from monorecon.train.triposr_trainer import _load_views, load_train_config


def _resident_mb() -> float:
    """This process's resident memory now (Linux: VmRSS of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("needs Linux (/proc/self/status)")


def _load(data: Path, out_dir: Path) -> None:
    """In a fresh process: load the bank and print its size and the peak memory it added."""
    model = yaml.safe_load((DEFAULT_MODEL_DIR / "config.yaml").read_text())
    config = load_train_config({"model": model, "data": {"root": str(data)}, "out_dir": str(out_dir)})
    before = _resident_mb()
    bank = _load_views(config, show_progress=False)
    growth = _resident_mb() - before
    size = bank.images.numel() / 2**20
    print(f"{bank.images.shape[0]} objects x {bank.images.shape[1]} views: bank {size:.0f} MB")
    print(f"resident memory added by loading: {growth:.0f} MB, x{growth / size:.2f} the bank")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="objects")
    parser.add_argument("--load", type=Path, help=argparse.SUPPRESS)  # the child process's dataset
    args = parser.parse_args()
    if args.load:
        _load(args.load, args.load.parent / "run")
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize_dataset(
            Path(tmp) / "data", args.n, 8, 128, 7, progress=False, sampling=ViewSampling.at_distance(1.9),
            split_fractions=(1.0, 0.0, 0.0),
        )  # fmt: skip
        subprocess.run([sys.executable, __file__, "--load", str(data)], check=True)


if __name__ == "__main__":
    main()
