"""TripoSR training speed: float32 against bfloat16 mixed precision (``precision: bfloat16`` of the training config).

Trains the bundled model's architecture (from its weights) on a small synthetic set with the settings of the bundled
model's later stages (2 objects x 2 supervision views of 24 x 24 rays, 48 samples per ray, supervision at 64 px), for
``--steps`` steps in each precision, alternating ``--repeats`` times, and prints seconds per step (the first step,
with its one-off costs, left out), the ratio against float32 and the losses of both runs (the same draws: they agree
up to bfloat16 rounding). bfloat16 pays off on CPUs with AMX / AVX512-BF16 and on recent GPUs.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_train.py`` (one thread, as the training runs use).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from monorecon.api import DEFAULT_MODEL_DIR
from monorecon.data import ViewSampling, synthesize_dataset
from monorecon.train import CSVLogger
from monorecon.train.triposr_trainer import train


def run(data: Path, out_dir: Path, precision: str, steps: int) -> tuple[float, np.ndarray]:
    """Train ``steps`` steps; return (seconds per step after the first, the losses)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    train(
        {
            "model": yaml.safe_load((DEFAULT_MODEL_DIR / "config.yaml").read_text()),
            "init_weights": str(DEFAULT_MODEL_DIR / "model.safetensors"),
            "data": {"root": str(data), "split": "train"},
            "optim": {"warmup_steps": 1},
            "out_dir": str(out_dir),
            "steps": steps,
            "batch_size": 2,
            "n_supervision_views": 2,
            "patch_size": 24,
            "supervision_size": 64,
            "n_samples": 48,
            "log_every": 1,
            "checkpoint_every_steps": steps,
            "num_threads": 1,
            "resume": False,
            "quiet": True,
            "precision": precision,
        }
    )
    rows = CSVLogger(out_dir / "train_log.csv").rows()
    seconds = (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1)
    return seconds, np.array([row["loss"] for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = synthesize_dataset(
            Path(tmp) / "data", 8, 4, 128, seed=0, progress=False, sampling=ViewSampling.at_distance(1.9),
            split_fractions=(1.0, 0.0, 0.0),
        )  # fmt: skip
        timings: dict[str, list[float]] = {"float32": [], "bfloat16": []}
        losses = {}
        for _ in range(args.repeats):
            for precision in timings:
                seconds, losses[precision] = run(data, Path(tmp) / precision, precision, args.steps)
                timings[precision].append(seconds)
    base = min(timings["float32"])
    for precision, values in timings.items():
        print(f"{precision:9s} {min(values):.3f} s/step (best of {args.repeats}), ratio {base / min(values):.2f}x")
    difference = np.abs(losses["bfloat16"] - losses["float32"]) / losses["float32"]
    print(f"losses, float32:  {np.round(losses['float32'], 4).tolist()}")
    print(f"losses, bfloat16: {np.round(losses['bfloat16'], 4).tolist()}")
    print(f"max relative difference of the losses: {difference.max():.1e}")


if __name__ == "__main__":
    main()
