"""Guards of a TripoSR training run's folder and resumes: divergence set-aside, run lock, resume checks, config
validation before anything is written, elapsed time across sessions (tiny model and dataset of test_train.py)."""

from __future__ import annotations

import fcntl
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import test_train
from monorecon import cli
from monorecon.train import triposr_trainer
from monorecon.train.triposr_trainer import train
from monorecon.train.utils import Checkpointer, CSVLogger, TrainingDiverged, check_finite_loss, hold_run_folder
from test_train import TINY_MODEL, _config, _final_weights

tiny_dataset = test_train.tiny_dataset  # test_train's module-scoped dataset fixture, made once for this module too


def _poison_forward(monkeypatch, from_call: int) -> None:
    """Make the loss NaN from the ``from_call``-th forward pass of this process on."""
    original, calls = triposr_trainer._TrainStep.forward, {"n": 0}

    def poisoned(self, batch, generator):
        terms = original(self, batch, generator)
        calls["n"] += 1
        if calls["n"] >= from_call:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(triposr_trainer._TrainStep, "forward", poisoned)


def _record_loaded_checkpoints(monkeypatch) -> list[str]:
    """Names of the checkpoints the trainer restores from, in order."""
    loaded, original = [], Checkpointer.load

    def load(self, path, *args, **kwargs):
        loaded.append(Path(path).name)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "load", load)
    return loaded


def _rewrite_extra(path: Path, **changes) -> None:
    """Change (None: drop) entries of a checkpoint's ``extra``, as another run or an older version wrote them."""
    payload = torch.load(path, weights_only=True)
    payload["extra"].update(changes)
    payload["extra"] = {key: value for key, value in payload["extra"].items() if value is not None}
    torch.save(payload, path)


def _interrupted_after_step_2(tiny_dataset: Path, out: Path, **overrides) -> dict:
    """A 4-step run with checkpoints at steps 2 and 4, then rolled back to its state after step 2; returns the
    config."""
    cfg = _config(tiny_dataset, out, **overrides)
    train(cfg)
    (out / "checkpoints" / "step_00000004.pt").unlink()
    shutil.rmtree(out / "final")
    return cfg


# --------------------------------------------------------------------------------------------------------------------
# 1. Divergence: the checkpoint named good has produced a finite loss
# --------------------------------------------------------------------------------------------------------------------
def test_a_nan_right_after_a_checkpoint_sets_it_aside_and_names_the_one_before(tiny_dataset, tmp_path, monkeypatch):
    """The loss of step 5 is NaN; it was computed from the weights after step 4, which step_00000004.pt holds:
    resuming from it would compute the same NaN. It is set aside and step 2's checkpoint named and resumed."""
    out = tmp_path / "run"
    cfg = _config(tiny_dataset, out, steps=6, checkpoint_every_steps=2)
    _poison_forward(monkeypatch, from_call=5)
    message = (
        r"loss is nan at step 5; the last good checkpoint is kept at .*step_00000002\.pt \(step_00000004\.pt holds "
        r"the weights that diverged: set aside as step_00000004\.pt\.diverged\)\. Lower the learning rate"
    )
    with pytest.raises(TrainingDiverged, match=message):
        train(cfg)
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000002.pt", "step_00000004.pt.diverged"]

    monkeypatch.undo()
    loaded = _record_loaded_checkpoints(monkeypatch)
    train(cfg)  # "then resume": from step 2, to the end
    assert loaded == ["step_00000002.pt"]
    assert [r["step"] for r in CSVLogger(out / "train_log.csv").rows()] == [1, 2, 3, 4, 5, 6]
    assert (checkpoints / "step_00000004.pt.diverged").is_file()  # kept for inspection, never resumed


def test_a_nan_at_the_first_step_after_the_only_checkpoint_leaves_none_named_good(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(2, torch.nn.Linear(1, 1))
    with pytest.raises(TrainingDiverged, match=r"at step 3; no good checkpoint is left \(step_00000002\.pt holds"):
        check_finite_loss(torch.tensor(float("inf")), 3, checkpointer)
    assert checkpointer.latest() is None


# --------------------------------------------------------------------------------------------------------------------
# 2. Resume: the run's config is written once the run starts; changed settings are named
# --------------------------------------------------------------------------------------------------------------------
def test_a_refused_resume_leaves_the_run_config_as_it_was(tiny_dataset, tmp_path):
    """A checkpoint of another model: the one-line error names the differing setting, and config.yaml still
    describes the run that wrote the checkpoints."""
    out = tmp_path / "run"
    _interrupted_after_step_2(tiny_dataset, out)
    written = (out / "config.yaml").read_text()
    other = {**TINY_MODEL, "decoder": {**TINY_MODEL["decoder"], "hidden_channels": 8}}
    message = r"step_00000002\.pt was written with another configuration \(model\.decoder\.hidden_channels changed\)"
    with pytest.raises(ValueError, match=message) as raised:
        train(_config(tiny_dataset, out, model=other))
    assert "\n" not in str(raised.value)
    assert (out / "config.yaml").read_text() == written


def test_a_checkpoint_of_a_smaller_model_names_its_missing_keys(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    path = checkpointer.save(1, torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"does not match the model: 2 missing keys: \['1\.weight', '1\.bias'\]$"):
        checkpointer.load(path, torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)))


def _changed_setting_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "with a changed" in str(w.message)]


def test_resuming_with_another_batch_size_seed_or_world_size_is_named_in_a_warning(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cfg = _interrupted_after_step_2(tiny_dataset, out)
    checkpoint = out / "checkpoints" / "step_00000002.pt"
    saved = torch.load(checkpoint, weights_only=True)["extra"]["config"]
    _rewrite_extra(checkpoint, config={**saved, "world_size": 2})  # as two torchrun processes save it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train({**cfg, "batch_size": 1, "seed": 4})
    consequence = "the run draws other samples than the uninterrupted one would"
    assert _changed_setting_warnings(caught) == [
        f"resuming {checkpoint} at step 2 with a changed {key} ({values}): {consequence}"
        for key, values in (("batch_size", "2 -> 1"), ("seed", "3 -> 4"), ("world_size", "2 -> 1"))
    ]


def test_resuming_with_other_training_settings_is_refused_before_the_views_load(tiny_dataset, tmp_path, monkeypatch):
    """Another loss weight, patch size or dataset would make a run that no config describes: refused, as the other
    trainers refuse it, before the (slow) views are loaded and with the run folder untouched."""
    out = tmp_path / "run"
    cfg = _interrupted_after_step_2(tiny_dataset, out)
    written = (out / "config.yaml").read_text()
    monkeypatch.setattr(triposr_trainer, "_load_views", lambda *args, **kwargs: pytest.fail("views loaded"))
    message = (
        r"step_00000002\.pt was written with another configuration \(loss\.lambda_mask, patch_size changed\): resume "
        r"with the run's settings, or train into another folder$"
    )
    with pytest.raises(ValueError, match=message):
        train({**cfg, "patch_size": 4, "loss": {**cfg.get("loss", {}), "lambda_mask": 0.25}})
    assert (out / "config.yaml").read_text() == written
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002.pt"]


def test_bookkeeping_settings_change_freely_on_resume(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cfg = _interrupted_after_step_2(tiny_dataset, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train({**cfg, "log_every": 3, "max_minutes": 60, "keep_checkpoints": 5, "quiet": True})
    assert _changed_setting_warnings(caught) == []
    assert (out / "final" / "model.safetensors").is_file()


def test_a_checkpoint_of_an_older_version_is_checked_against_the_run_config(tiny_dataset, tmp_path):
    """Checkpoints written before the config was saved in them hold batch_size, seed and world_size at the top of
    ``extra``: the run's config.yaml, updated with those, is what a resume is checked against."""
    out = tmp_path / "run"
    cfg = _interrupted_after_step_2(tiny_dataset, out)
    checkpoint = out / "checkpoints" / "step_00000002.pt"
    _rewrite_extra(checkpoint, config=None, batch_size=2, seed=3, world_size=2)
    with pytest.raises(ValueError, match=r"another configuration \(loss\.lambda_mask changed\)"):
        train({**cfg, "loss": {**cfg.get("loss", {}), "lambda_mask": 0.25}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(cfg)
    assert _changed_setting_warnings(caught) == [
        f"resuming {checkpoint} at step 2 with a changed world_size (2 -> 1): the run draws other samples than the "
        "uninterrupted one would"
    ]


# --------------------------------------------------------------------------------------------------------------------
# 3. One run at a time in a run folder
# --------------------------------------------------------------------------------------------------------------------
def test_a_second_run_in_a_held_folder_is_refused_at_once(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    loads = []
    monkeypatch.setattr(triposr_trainer, "_load_views", lambda *args, **kwargs: loads.append(1))
    with hold_run_folder(out):  # a first run holding the folder (flock: another open of the file is refused too)
        with pytest.raises(ValueError, match=r"run is in use by another training run .*: wait for that run to end"):
            train(_config(tiny_dataset, out))
        assert sorted(p.name for p in out.iterdir()) == [".train.lock"]  # nothing written by the refused run
    assert loads == []  # refused before the views are loaded
    assert not out.exists()  # created by the first holder, which wrote nothing into it
    monkeypatch.undo()
    train(_config(tiny_dataset, out, steps=2))  # released with the first run
    assert (out / "final" / "model.safetensors").is_file()


def test_the_lock_is_held_while_the_run_trains(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "run"
    held = []
    original = triposr_trainer._make_batch

    def make_batch(*args):
        with open(out / ".train.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)
            else:
                held.append(False)
        return original(*args)

    monkeypatch.setattr(triposr_trainer, "_make_batch", make_batch)
    train(_config(tiny_dataset, out, steps=2))
    assert held == [True, True]


def test_a_run_that_fails_before_it_starts_leaves_no_folder(tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match="no usable object"):
        train(_config(tiny_dataset, tmp_path / "out", data={"root": str(tiny_dataset), "split": "test"}))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------------
# 4-5. Checkpoints past the configured steps; a run stopped by max_minutes
# --------------------------------------------------------------------------------------------------------------------
def test_a_checkpoint_past_steps_is_refused(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cfg = _config(tiny_dataset, out)
    train(cfg)
    written = (out / "config.yaml").read_text()
    weights = _final_weights(out)
    message = r"steps is 2 but .*step_00000004\.pt is already at step 4: raise steps, or train into another folder"
    with pytest.raises(ValueError, match=message):
        train({**cfg, "steps": 2})
    assert (out / "config.yaml").read_text() == written
    assert all(torch.equal(weights[key], value) for key, value in _final_weights(out).items())


def test_a_run_stopped_by_max_minutes_says_where_it_stopped(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_dataset, tmp_path / "run", max_minutes=1e-9, quiet=False)))
    assert cli.main(["train", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("training stopped at step 1 of 4 (max_minutes spent; final/ holds its weights): "
                                   "run the same command again to resume: ")  # fmt: skip
    # The warning starts a line of its own, not the rest of the progress bar's.
    lines = re.split(r"[\r\n]", captured.err)
    assert any(line.startswith("monorecon: warning: max_minutes (1e-09) spent after step 1 of 4") for line in lines)
    assert all(line.startswith("monorecon: warning") for line in lines if "monorecon: warning" in line)


# --------------------------------------------------------------------------------------------------------------------
# 7. Config errors before anything is written
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data": {"max_objects": 0}}, r"data\.max_objects must be a positive integer or null, got 0"),
        ({"data": {"max_objects": -2}}, r"data\.max_objects must be a positive integer or null, got -2"),
        ({"data": {"input_background": 7.0}}, r"data\.input_background must lie in \[0, 1\], got 7\.0"),
        ({"input_distance": -1.0}, r"input_distance must be positive and finite, got -1\.0"),
        ({"input_fov_deg": float("nan")}, r"input_fov_deg must lie in \(0, 180\) degrees, got nan"),
        ({"checkpoint_every_minutes": float("nan")}, r"checkpoint_every_minutes must be > 0, got nan"),
        ({"keep_checkpoints": 0}, r"keep_checkpoints must be a positive integer, got 0"),
        ({"patch_size": 100}, r"patch_size \(100\) exceeds the 32-pixel side of the supervision views"),
        ({"n_supervision_views": 5}, r"objects have 3 views, fewer than n_supervision_views \(5\)"),
    ],
)
def test_config_errors_are_one_line_before_anything_is_written(tiny_dataset, tmp_path, overrides, message):
    cfg = _config(tiny_dataset, tmp_path / "out", **overrides)
    if "data" in overrides:
        cfg["data"] = {"root": str(tiny_dataset), **overrides["data"]}
    with pytest.raises(ValueError, match=message) as raised:
        train(cfg)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_an_out_dir_that_is_a_file_is_refused_before_the_views_are_loaded(tiny_dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.write_text("not a folder")
    monkeypatch.setattr(triposr_trainer, "_load_views", lambda *args, **kwargs: pytest.fail("views loaded"))
    with pytest.raises(ValueError, match=r"out_dir .*out is a file, not a folder"):
        train(_config(tiny_dataset, out))


# --------------------------------------------------------------------------------------------------------------------
# 8. Elapsed time continues across sessions
# --------------------------------------------------------------------------------------------------------------------
def test_elapsed_time_continues_after_a_resume(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    cfg = _interrupted_after_step_2(tiny_dataset, out)
    checkpoint = out / "checkpoints" / "step_00000002.pt"
    saved = torch.load(checkpoint, weights_only=True)["extra"]["elapsed_s"]
    before = CSVLogger(out / "train_log.csv").rows()
    assert saved >= before[1]["elapsed_s"] > 0  # written after step 2's row
    _rewrite_extra(checkpoint, elapsed_s=1000.0)  # as if the first session had run for 1000 s
    train(cfg)
    rows = CSVLogger(out / "train_log.csv").rows()
    assert [r["elapsed_s"] for r in rows[:2]] == [r["elapsed_s"] for r in before[:2]]
    assert 1000.0 < rows[2]["elapsed_s"] < rows[3]["elapsed_s"] < 1000.0 + 600.0

    # A checkpoint of an older version, without the elapsed time: the resumed session counts from 0.
    cfg = _interrupted_after_step_2(tiny_dataset, tmp_path / "old")
    _rewrite_extra(tmp_path / "old" / "checkpoints" / "step_00000002.pt", elapsed_s=None)
    train(cfg)
    assert 0.0 < CSVLogger(tmp_path / "old" / "train_log.csv").rows()[2]["elapsed_s"] < 600.0
