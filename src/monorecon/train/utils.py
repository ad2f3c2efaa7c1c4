"""Training infrastructure shared by the monorecon trainers (TripoSR, G3DR, MeshGAN).

* :func:`seed_everything` and :func:`step_generator` (per-step, per-rank random streams: resuming needs no RNG state),
* :func:`cosine_with_warmup` learning-rate schedule,
* :class:`Checkpointer`: atomic checkpoints (model, optimiser, scheduler, step, RNG states) with exact resume (the
  optimiser's settings, e.g. its learning rate, come from the run's config, not from the checkpoint),
* :class:`CSVLogger` and :func:`plot_curves` (PIL only: matplotlib is not a dependency),
* :class:`TrainingDiverged` / :func:`check_finite_loss` / :func:`check_finite_parameters`: stop on a NaN/inf loss
  or weight, keeping the last good checkpoint (one written from the weights that diverged is set aside),
* :func:`hold_run_folder`: one training run at a time in a run folder,
* DDP helpers for ``torchrun`` (gloo on CPU, nccl on CUDA),
* :func:`load_dataclass_config`: YAML / dict -> nested dataclasses with unknown keys reported.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import io
import math
import os
import random
import re
import types
import typing
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image, ImageDraw

from ..core.checks import NonFiniteError
from ..io.atomic import atomic_write, atomic_write_bytes
from ..io.weights import state_dict_mismatch
from ..io.yaml_config import load_yaml

__all__ = [
    "CSVLogger",
    "Checkpointer",
    "TrainingDiverged",
    "barrier",
    "check_finite_loss",
    "check_finite_parameters",
    "cleanup_distributed",
    "cosine_with_warmup",
    "dataclass_to_dict",
    "divergence_error",
    "diverges_on_non_finite",
    "hold_run_folder",
    "init_distributed",
    "is_main_process",
    "load_dataclass_config",
    "non_finite_loss",
    "plot_curves",
    "seed_everything",
    "step_generator",
    "unwrap_model",
    "wrap_ddp",
]

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code may use the legacy global generator
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, step, rank).

    Drawing every random choice of a training step from it makes a resumed run repeat the uninterrupted one exactly,
    and gives each DDP rank different samples.
    """
    # Distinct odd multipliers keep (seed, step, rank) triples from colliding for any realistic values.
    mixed = (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 12_345) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


# --------------------------------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------------------------------
def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x base LR.

    The factor at step s (``scheduler.step()`` called once per optimiser step) is ``(s + 1) / warmup_steps`` while
    ``s < warmup_steps``, then ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p = (s - warmup) / (total - warmup)``
    clamped to [0, 1].
    """
    if warmup_steps < 0 or total_steps < 1 or warmup_steps > total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps, total_steps >= 1; got {warmup_steps}, {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - saved for exact resume
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # NumPy's key array is stored as a tensor so the checkpoint loads with torch.load(weights_only=True).
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
        "numpy_has_gauss": int(np_state["has_gauss"]),
        "numpy_gauss": float(np_state["gauss"]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": "MT19937",
            "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
            "has_gauss": state["numpy_has_gauss"],
            "gauss": state["numpy_gauss"],
        }
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Atomic training checkpoints ``step_{step:08d}.pt`` in a folder, keeping the newest ``keep``.

    Each file holds the model, optimiser and scheduler state dicts, the step, the RNG states of torch, NumPy and
    Python, and an optional ``extra`` dict (plain Python values and tensors). Files are written to a temporary name and
    renamed, so a crash never leaves a partial checkpoint; loading uses ``torch.load(weights_only=True)``.
    """

    PATTERN = re.compile(r"^step_(\d{8})\.pt$")
    #: Appended to the name of a checkpoint set aside (:meth:`set_aside`): resuming no longer picks it.
    SET_ASIDE_SUFFIX = ".diverged"

    def __init__(self, directory: str | os.PathLike, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def checkpoints(self) -> list[Path]:
        """Existing checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if self.PATTERN.match(p.name)]
        return sorted(found, key=self.step_of)

    @classmethod
    def step_of(cls, path: str | os.PathLike) -> int:
        """The step a checkpoint file was written at (from its name ``step_{step:08d}.pt``)."""
        match = cls.PATTERN.match(Path(path).name)
        if match is None:
            raise ValueError(f"{path} is not named as a training checkpoint (step_NNNNNNNN.pt)")
        return int(match.group(1))

    def set_aside(self, path: str | os.PathLike) -> Path:
        """Rename a checkpoint to ``NAME.diverged`` (kept for inspection, no longer resumed nor counted in ``keep``);
        return the new path. Renaming a file another process (a DDP rank) already set aside is not an error."""
        path = Path(path)
        target = path.with_name(path.name + self.SET_ASIDE_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, target)
        return target

    def latest(self) -> Path | None:
        """The newest checkpoint file, or None."""
        found = self.checkpoints()
        return found[-1] if found else None

    def check_fresh(self) -> None:
        """Refuse a run that starts over (no resume) where checkpoints already are: its own would be numbered below
        theirs, so keeping the newest ``keep`` by step would delete each new one as it is written, and a later
        resume would load the earlier run.

        Raises:
            ValueError: the folder holds checkpoints (named, with the way out).
        """
        latest = self.latest()
        if latest is not None:
            raise ValueError(
                f"{self.directory} holds checkpoints of an earlier run (newest {latest.name}) and resume is off: "
                "choose another out_dir, or delete them to start over"
            )

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` atomically and delete the oldest beyond ``keep``; return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "step": int(step),
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
            "extra": extra or {},
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        path = self.directory / f"step_{step:08d}.pt"
        atomic_write_bytes(path, buffer.getvalue())
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def load(
        self,
        path: str | os.PathLike,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        restore_rng: bool = True,
    ) -> dict[str, Any]:
        """Restore states from ``path`` into the given objects; return ``{"step", "extra", "path"}``.

        Raises:
            ValueError: the file is unreadable/corrupt or does not match the model.
        """
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # any unpickling failure means a corrupt or foreign file
            raise ValueError(f"cannot read checkpoint {path}: {error}") from error
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict) or "step" not in payload:
            raise ValueError(f"{path} is not a monorecon training checkpoint")
        expected = {key: value.shape for key, value in unwrap_model(model).state_dict().items()}
        problems = state_dict_mismatch(payload["model"], expected)
        if problems:  # named here: PyTorch's own message spans lines, of which a one-line error keeps only the first
            raise ValueError(f"checkpoint {path} does not match the model: {'; '.join(problems)}")
        unwrap_model(model).load_state_dict(payload["model"])
        if optimizer is not None and payload["optimizer"] is not None:
            _load_optimizer_keeping_settings(optimizer, payload["optimizer"], path)
        if scheduler is not None and payload["scheduler"] is not None:
            base_lrs = list(scheduler.base_lrs)  # the config's learning rates, as the optimiser's settings above
            scheduler.load_state_dict(payload["scheduler"])
            scheduler.base_lrs = base_lrs
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):  # the rate of the restored step
                groups = scheduler.optimizer.param_groups
                for group, base, factor in zip(groups, base_lrs, scheduler.lr_lambdas, strict=True):
                    group["lr"] = base * factor(scheduler.last_epoch)
        if restore_rng:
            _set_rng_state(payload["rng"])
        return {"step": int(payload["step"]), "extra": payload["extra"], "path": path}

    def load_latest(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        restore_rng: bool = True,
    ) -> dict[str, Any] | None:
        """Restore the newest checkpoint (see :meth:`load`); None when the folder holds none."""
        path = self.latest()
        return None if path is None else self.load(path, model, optimizer, scheduler, restore_rng)


# --------------------------------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------------------------------
class TrainingDiverged(RuntimeError):
    """Raised when the loss becomes NaN or infinite; the message names the step and the last good checkpoint."""


def _load_optimizer_keeping_settings(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path) -> None:
    """Load an optimiser's state (moments, step counts) but keep the settings it was built with (the run's config:
    a learning rate lowered after a divergence must apply); a changed setting is named in a warning."""
    settings = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    changed = set()
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        changed |= {key for key, value in wanted.items() if key not in ("lr", "initial_lr") and group.get(key) != value}
        changed |= {"lr"} if group.get("initial_lr", group["lr"]) != wanted.get("initial_lr", wanted["lr"]) else set()
        group.update(wanted)
    if changed:
        warnings.warn(f"resuming {path.name} with the config's optimiser settings ({', '.join(sorted(changed))} "
                      "changed since it was written)", stacklevel=3)  # fmt: skip


#: What a divergence message tells the user to do (a trainer without gradient clipping gives its own).
DIVERGENCE_ADVICE = "Lower the learning rate (or strengthen gradient clipping), then resume."


def check_finite_loss(
    loss: torch.Tensor, step: int, checkpoint: Checkpointer | Path | None = None, advice: str = DIVERGENCE_ADVICE
) -> None:
    """Raise :class:`TrainingDiverged` if ``loss`` is not finite (call it before the optimiser step; also for the
    gradient norm).

    A non-finite loss of step ``step`` (counted from 1) condemns the weights it was computed from, those after update
    ``step - 1``: resuming from their checkpoint would compute the same loss again, whatever the learning rate. So a
    :class:`Checkpointer`'s newest file, when it is that step's, is set aside (:meth:`Checkpointer.set_aside`) and the
    one before it is named.

    Args:
        loss: the loss (any shape; every element is checked).
        step: the step, for the message.
        checkpoint: where the last good state is: a :class:`Checkpointer` (its newest file that is not of step
            ``step - 1``) or a checkpoint file (named only if it exists).
        advice: the message's last sentence, what to do.
    """
    what = non_finite_loss(loss)
    if what is not None:
        raise _diverged(what, step, checkpoint, condemned_step=step - 1, advice=advice)


def non_finite_loss(loss: torch.Tensor) -> str | None:
    """``"loss is nan"`` (the first non-finite value) when ``loss`` holds one, else None."""
    finite = torch.isfinite(loss.detach())
    return None if bool(finite.all()) else f"loss is {loss.detach()[~finite].flatten()[0].item()}"


def check_finite_parameters(
    parameters: Iterable[torch.Tensor],
    step: int,
    checkpoint: Checkpointer | Path | None = None,
    advice: str = DIVERGENCE_ADVICE,
) -> None:
    """Raise :class:`TrainingDiverged` if a parameter holds NaN/inf (call it after the optimiser step, before a
    checkpoint is written: a finite loss can still be followed by an update that breaks the weights, and a checkpoint
    of broken weights could never be resumed). Arguments as :func:`check_finite_loss`."""
    finite = torch.stack([torch.isfinite(p.detach()).all() for p in parameters])  # one sync per step, not per tensor
    if not bool(finite.all()):  # the broken update was never checkpointed: the newest checkpoint stays good
        what = "the update made a weight NaN or infinite"
        raise _diverged(what, step, checkpoint, condemned_step=None, advice=advice)


@contextlib.contextmanager
def diverges_on_non_finite(step: int, checkpoint: Checkpointer | Path | None = None) -> Iterator[None]:
    """Around a training step's forward pass: NaN/inf activations caught by the model's own checks
    (:class:`~monorecon.core.checks.NonFiniteError`) mean the run diverged (:class:`TrainingDiverged`, the last good
    checkpoint named, and one of the weights that diverged set aside, as by :func:`check_finite_loss`), not that the
    input was bad."""
    try:
        yield
    except NonFiniteError as err:
        raise _diverged(str(err), step, checkpoint, condemned_step=step - 1) from err


def _diverged(
    what: str,
    step: int,
    checkpoint: Checkpointer | Path | None,
    condemned_step: int | None,
    advice: str = DIVERGENCE_ADVICE,
) -> TrainingDiverged:
    """The error of a run that diverged at ``step``; a :class:`Checkpointer`'s newest file, when it is of
    ``condemned_step`` (the weights that diverged), is set aside first, so the one named can be resumed."""
    set_aside = ""
    if isinstance(checkpoint, Checkpointer):
        last = checkpoint.latest()
        if last is not None and condemned_step is not None and Checkpointer.step_of(last) == condemned_step:
            moved = checkpoint.set_aside(last)
            set_aside = f" ({last.name} holds the weights that diverged: set aside as {moved.name})"
            last = checkpoint.latest()
    else:
        last = checkpoint
    return divergence_error(what, step, last, set_aside, advice)


def divergence_error(
    what: str, step: int, last: Path | None, set_aside: str = "", advice: str = DIVERGENCE_ADVICE
) -> TrainingDiverged:
    """The one-line error of a run that diverged at ``step``: ``what`` happened, the last good checkpoint ``last``
    (named if it exists), ``set_aside`` (a note on a checkpoint of the weights that diverged, moved away) and
    ``advice``."""
    if last is not None and Path(last).is_file():
        kept = f"the last good checkpoint is kept at {last}"
    elif set_aside:
        kept = "no good checkpoint is left"
    else:
        kept = "no checkpoint had been written yet"
    return TrainingDiverged(f"training diverged: {what} at step {step}; {kept}{set_aside}. {advice}")


# --------------------------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------------------------
#: The lock file :func:`hold_run_folder` creates in a run folder.
RUN_LOCK_NAME = ".train.lock"


@contextlib.contextmanager
def hold_run_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` if needed and hold an exclusive lock on it (``flock`` of ``folder/.train.lock``) while the
    block runs: two runs in one folder would interleave their logs and checkpoints. The lock goes with the process, so
    a killed run leaves none behind. A folder created here and left holding only the lock file (a run that failed
    before it wrote anything) is removed again. Yields the folder.

    Raises:
        ValueError: another process holds the folder (named, with the way out).
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / RUN_LOCK_NAME
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(
                f"{folder} is in use by another training run (it holds {lock_path}): wait for that run to end, "
                "or choose another out_dir"
            ) from None
        try:
            yield folder
        finally:
            if created and [p.name for p in folder.iterdir()] == [RUN_LOCK_NAME]:
                lock_path.unlink()
                folder.rmdir()


# --------------------------------------------------------------------------------------------------------------------
# Logging and curves
# --------------------------------------------------------------------------------------------------------------------
class CSVLogger:
    """Append rows of scalars (one per logged step) to a CSV file with a fixed header.

    The header is taken from the first row written; later rows must use the same keys. On resume call
    :meth:`truncate_after` so rows logged after the restored checkpoint are not duplicated.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                self.fields = next(csv.reader(f), None)

    def log(self, row: dict[str, float | int]) -> None:
        """Append one row (``step`` first by convention)."""
        if self.fields is None:
            self.fields = list(row)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(self.fields)
        if set(row) != set(self.fields):
            raise ValueError(f"CSV row keys {sorted(row)} differ from the header {sorted(self.fields)}")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([_format_value(row[k]) for k in self.fields])

    def rows(self) -> list[dict[str, float]]:
        """All rows read back as floats."""
        return read_csv_rows(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` is greater than ``step`` (atomic rewrite)."""
        if self.fields is None or "step" not in self.fields:
            return
        with self.path.open(newline="") as f:
            rows = list(csv.reader(f))[1:]
        index = self.fields.index("step")
        kept = [r for r in rows if float(r[index]) <= step]
        with atomic_write(self.path, "w") as f:
            writer = csv.writer(f)
            writer.writerow(self.fields)
            writer.writerows(kept)


def _format_value(value: float | int) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item()
    return str(value) if isinstance(value, int) else f"{float(value):.6g}"


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a CSV of numbers as dicts of floats (non-numeric cells become NaN)."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        out = []
        for row in reader:
            parsed = {}
            for key, text in row.items():
                try:
                    parsed[key] = float(text)
                except (TypeError, ValueError):
                    parsed[key] = float("nan")
            out.append(parsed)
    return out


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Means of ``window`` consecutive rows: (N, ...) -> (N - window + 1, ...) (no padding at the ends)."""
    values = np.asarray(values, dtype=np.float64)
    if not 1 <= window <= len(values):
        raise ValueError(f"window must lie in [1, {len(values)}], got {window}")
    sums = np.cumsum(np.concatenate([np.zeros_like(values[:1]), values]), axis=0)
    return (sums[window:] - sums[:-window]) / window


def plot_curves(
    csv_path: str | os.PathLike,
    png_path: str | os.PathLike,
    columns: list[str] | None = None,
    x: str = "step",
    panel_size: tuple[int, int] = (360, 220),
) -> Path:
    """Draw one panel per column of a training CSV (y against ``x``) into a PNG with PIL.

    Columns default to every numeric column except ``x``. Axes show the min/max values; the y axis is logarithmic
    for strictly positive columns spanning more than a factor 20. With more than 50 points the raw values are drawn
    light and their running mean (:func:`running_mean`, a window of 1/25 of the points) on top, since per-step
    losses of small batches are too noisy to read a trend from.
    """
    rows = read_csv_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no rows to plot")
    columns = columns or [k for k in rows[0] if k != x]
    missing = [c for c in [*columns, x] if c not in rows[0]]
    if missing:
        raise ValueError(f"{csv_path} has no column(s) {missing}")
    pw, ph = panel_size
    n_cols = min(3, len(columns))
    n_rows = math.ceil(len(columns) / n_cols)
    canvas = Image.new("RGB", (pw * n_cols, ph * n_rows), "white")
    draw = ImageDraw.Draw(canvas)
    xs = np.array([r[x] for r in rows])
    for k, column in enumerate(columns):
        ox, oy = (k % n_cols) * pw, (k // n_cols) * ph
        ys = np.array([r[column] for r in rows])
        good = np.isfinite(ys) & np.isfinite(xs)
        draw.text((ox + 8, oy + 4), column, fill="black")
        left, top, right, bottom = ox + 50, oy + 20, ox + pw - 10, oy + ph - 25
        draw.rectangle([left, top, right, bottom], outline="gray")
        if good.sum() == 0:
            continue
        gx, gy = xs[good], ys[good]
        log_scale = bool((gy > 0).all() and gy.max() / gy.min() > 20)
        vy = np.log10(gy) if log_scale else gy
        x0, x1 = float(gx.min()), float(gx.max())
        y0, y1 = float(vy.min()), float(vy.max())
        x1, y1 = (x1 if x1 > x0 else x0 + 1.0), (y1 if y1 > y0 else y0 + 1e-12)
        px = left + (gx - x0) / (x1 - x0) * (right - left)
        py = bottom - (vy - y0) / (y1 - y0) * (bottom - top)
        points = list(zip(px.tolist(), py.tolist(), strict=True))
        if len(points) > 50:
            draw.line(points, fill=(170, 195, 235), width=1)
            window = len(points) // 25
            trend = running_mean(np.stack([px, py], axis=1), window)
            draw.line([tuple(p) for p in trend.tolist()], fill=(20, 60, 160), width=2)
        elif len(points) > 1:
            draw.line(points, fill=(30, 90, 200), width=2)
        else:
            draw.ellipse([px[0] - 2, py[0] - 2, px[0] + 2, py[0] + 2], fill=(30, 90, 200))
        top_label, bottom_label = (10**y1, 10**y0) if log_scale else (y1, y0)
        draw.text((ox + 2, top), f"{top_label:.3g}", fill="black")
        draw.text((ox + 2, bottom - 10), f"{bottom_label:.3g}", fill="black")
        draw.text((left, bottom + 5), f"{x0:.0f}", fill="black")
        draw.text((right - 40, bottom + 5), f"{x1:.0f}", fill="black")
        if log_scale:
            draw.text((right - 30, top + 2), "log", fill="gray")
    png_path = Path(png_path)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(png_path, buffer.getvalue())
    return png_path


# --------------------------------------------------------------------------------------------------------------------
# Distributed
# --------------------------------------------------------------------------------------------------------------------
def init_distributed(cuda: bool | None = None) -> tuple[int, int]:
    """Join the process group described by ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...).

    Uses nccl on CUDA (each process on the GPU of its ``LOCAL_RANK``), gloo on the CPU; ``cuda`` None: CUDA when
    available. Without those variables (or with ``WORLD_SIZE=1``) no group is joined, but on CUDA the process still
    takes the GPU of its ``LOCAL_RANK``. Returns ``(rank, world_size)``.
    """
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """True on rank 0 or when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Synchronise all ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, find_unused_parameters: bool = False, cuda: bool | None = None) -> torch.nn.Module:
    """Wrap in DistributedDataParallel when a process group is active, else return the model unchanged.

    ``find_unused_parameters`` is needed when some parameters get no gradient (e.g. an unused ViT pooler). ``cuda``
    (None: CUDA when available): the model is on the current GPU.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return model
    if torch.cuda.is_available() if cuda is None else cuda:
        device = torch.cuda.current_device()
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device], output_device=device, find_unused_parameters=find_unused_parameters
        )
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------------
def load_dataclass_config(source: str | os.PathLike | dict[str, Any], cls: type[T]) -> T:
    """Build dataclass ``cls`` from a YAML file or a dict; nested dataclass fields take nested mappings.

    Raises:
        ValueError: unreadable file, unknown keys (named with their dotted path), or values of the wrong type.
    """
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"config file not found: {path}")
        data = load_yaml(path) or {}
    else:
        data = source
    return _build(cls, data, cls.__name__)


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    kwargs = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"config section {where}: {error}") from error


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError("; or ".join(errors) if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict or hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    return value


def dataclass_to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass (nested) as plain dicts/lists for YAML output."""
    return yaml.safe_load(yaml.safe_dump(dataclasses.asdict(obj), sort_keys=False))
