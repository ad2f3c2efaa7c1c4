"""Training: shared infrastructure (:mod:`.utils`, :mod:`.resume`) and the TripoSR trainer (:mod:`.triposr_trainer`).

The trainer is imported lazily (it pulls in the model and ``transformers``), so ``monorecon.train.utils`` stays
cheap to import for the other trainers.
"""

from .utils import Checkpointer, CSVLogger, TrainingDiverged, cosine_with_warmup, plot_curves, seed_everything

_TRAINER_NAMES = ("TripoSRTrainConfig", "export_weights", "load_train_config", "train")

__all__ = [
    "CSVLogger",
    "Checkpointer",
    "TrainingDiverged",
    "TripoSRTrainConfig",
    "cosine_with_warmup",
    "export_weights",
    "load_train_config",
    "plot_curves",
    "seed_everything",
    "train",
]


def __getattr__(name: str):
    if name in _TRAINER_NAMES:
        from . import triposr_trainer

        return getattr(triposr_trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
