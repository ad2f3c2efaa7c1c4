"""Resuming a training run: the settings a checkpoint was written with against the config it is resumed under.

Shared by every trainer (TripoSR's ``train``, G3DR's and MeshGAN's ``train-*``), so that all follow one policy:
``steps`` may grow (to train longer) but not fall below the checkpoint's step, bookkeeping settings may change freely,
a few named settings may change with a warning (the learning rate lowered after a divergence), anything else is
refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from ..io.yaml_config import load_yaml
from .utils import Checkpointer

__all__ = ["changed_settings", "check_checkpoint_settings", "check_resumed_settings"]


def changed_settings(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings mappings (a key on one side only counts)."""
    changed = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changed += changed_settings(old, new, f"{prefix}{key}.")
        elif key not in saved or key not in current or _plain(old) != _plain(new):
            changed.append(f"{prefix}{key}")
    return changed


def _plain(value: Any) -> Any:
    """Tuples as lists: a setting read back from YAML is a list where the config holds a tuple."""
    return [_plain(item) for item in value] if isinstance(value, list | tuple) else value


def check_resumed_settings(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    checkpoint_step: int,
    where: str,
    *,
    free: Collection[str] = (),
    warned: Mapping[str, str] | None = None,
) -> None:
    """Refuse resuming the checkpoint ``where`` (of step ``checkpoint_step``, written under ``saved``) under
    ``current`` settings it was not written with.

    Args:
        saved, current: the run's settings (nested mappings; ``current["steps"]`` the steps to train to).
        checkpoint_step: the checkpoint's step: fewer ``steps`` would label the result as trained less than it is.
        where: the checkpoint or run folder, for the messages.
        free: dotted keys that may change silently (bookkeeping: logging, threads, where checkpoints go...).
        warned: dotted keys that may change, each with the consequence a warning names (e.g. ``steps`` re-timing a
            schedule).

    Raises:
        ValueError: fewer steps than the checkpoint's, or other changed settings (named).
    """
    if current["steps"] < checkpoint_step:  # the result would be labelled as trained for fewer steps than it was
        raise ValueError(
            f"steps is {current['steps']} but {where} is already at step {checkpoint_step}: raise steps, or train "
            "into another folder"
        )
    warned = warned or {}
    changed = changed_settings(saved, current)
    refused = [key for key in changed if key not in free and key not in warned]
    if refused:
        raise ValueError(
            f"{where} was written with another configuration ({', '.join(refused)} changed): resume with the run's "
            "settings, or train into another folder"
        )
    for key in changed:
        if key in warned:
            values = f"{_setting(saved, key)!r} -> {_setting(current, key)!r}"
            warnings.warn(f"resuming {where} at step {checkpoint_step} with a changed {key} ({values}): "
                          f"{warned[key]}", stacklevel=3)  # fmt: skip


def _setting(settings: Mapping[str, Any], dotted_key: str) -> Any:
    """The value of a dotted key in nested settings (None where a level is missing)."""
    value: Any = settings
    for part in dotted_key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return _plain(value)


def check_checkpoint_settings(
    checkpointer: Checkpointer,
    current: Mapping[str, Any],
    fallback: Path,
    *,
    free: Collection[str] = (),
    warned: Mapping[str, str] | None = None,
) -> None:
    """Before a run resumes from the newest checkpoint of ``checkpointer`` (none: nothing to check), the settings it
    was written with (its ``extra["config"]``; for checkpoints that lack them, the YAML ``fallback`` updated with the
    top-level settings the checkpoint's ``extra`` holds) against ``current``, as :func:`check_resumed_settings`.
    Checked before anything is built or written."""
    latest = checkpointer.latest()
    if latest is None:
        return
    try:
        payload = torch.load(latest, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable file: Checkpointer.load reports it, with its reason
        return
    if not isinstance(payload, dict) or "step" not in payload:
        return  # Checkpointer.load names the foreign file
    extra = payload.get("extra") if isinstance(payload.get("extra"), Mapping) else {}
    saved = extra.get("config")
    if saved is None and fallback.is_file():
        saved = load_yaml(fallback)
        if isinstance(saved, Mapping):  # settings saved beside the config (e.g. the number of processes)
            saved = {**saved, **{key: value for key, value in extra.items() if key in current}}
    saved = saved if isinstance(saved, Mapping) else current  # nothing to compare with: only the steps are checked
    check_resumed_settings(saved, current, int(payload["step"]), str(latest), free=free, warned=warned)
