"""Reading weight files (``monorecon.io.weights``) and the loaders built on it: bad files give one-line errors."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from monorecon import cli
from monorecon.io.weights import read_safetensors_metadata, read_state_dict
from monorecon.models.g3dr.diffusion import load_rgbd_diffusion
from monorecon.models.g3dr.inference import load_g3dr
from monorecon.models.meshgan.train import load_generator

JUNK = bytes(range(256)) * 8


def _state() -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.tensor([1, 2], dtype=torch.int64)}


def test_reads_safetensors_and_pickles_with_their_values(tmp_path):
    save_file(_state(), str(tmp_path / "w.safetensors"), metadata={"note": "hi"})
    torch.save(_state(), tmp_path / "w.pt")
    torch.save({"state_dict": _state(), "epoch": 3}, tmp_path / "lightning.ckpt")  # unwrapped
    for name in ("w.safetensors", "w.pt", "lightning.ckpt"):
        state = read_state_dict(tmp_path / name)
        assert state.keys() == _state().keys() and all(torch.equal(state[k], v) for k, v in _state().items())
    assert read_safetensors_metadata(tmp_path / "w.safetensors") == {"note": "hi"}


def test_bad_files_are_value_errors_naming_the_file(tmp_path):
    save_file(_state(), str(tmp_path / "good.safetensors"))
    whole = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) - 10])
    (tmp_path / "junk.safetensors").write_bytes(JUNK)
    (tmp_path / "junk.pt").write_bytes(JUNK)
    for name in ("cut.safetensors", "junk.safetensors", "junk.pt"):
        with pytest.raises(ValueError, match=f"cannot read weights .*{name}: the file is truncated or corrupt"):
            read_state_dict(tmp_path / name)
    with pytest.raises(ValueError, match=r"junk\.safetensors: the file is truncated or corrupt"):
        read_safetensors_metadata(tmp_path / "junk.safetensors")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="do not hold a state_dict"):
        read_state_dict(tmp_path / "list.pt")
    with pytest.raises(ValueError, match="weights file not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_method_loaders_refuse_junk_weights(tmp_path):
    (tmp_path / "generator.safetensors").write_bytes(JUNK)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_generator(tmp_path)
    save_file(_state(), str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no generator configuration"):
        load_generator(tmp_path / "other.safetensors")
    for loader, model in ((load_g3dr, {}), (load_rgbd_diffusion, {"class_names": ["vase"], "base_channels": 8})):
        folder = tmp_path / loader.__name__
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(JUNK)
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": model}))
        with pytest.raises(ValueError, match="truncated or corrupt"):
            loader(folder)


def test_invert_with_a_junk_generator_is_one_line(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(JUNK)
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGBA", (32, 32), (200, 40, 40, 255)).save(image)
    assert (
        cli.main(["invert", str(image), "--generator", str(tmp_path / "junk.safetensors"), "-o", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("monorecon: error: cannot read weights") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_mapping_with_non_tensor_values_is_not_a_state_dict(tmp_path):
    """A pickle of names to tensors *and* plain values (an epoch count, a config string: a training checkpoint, not
    weights) is refused as the docstring says, at the top level and inside a Lightning ``state_dict`` wrapper."""
    torch.save({**_state(), "epoch": 3}, tmp_path / "mixed.pt")
    torch.save({"state_dict": {**_state(), "note": "hi"}}, tmp_path / "wrapped.ckpt")
    torch.save({1: torch.zeros(2)}, tmp_path / "int_keys.pt")
    for name in ("mixed.pt", "wrapped.ckpt", "int_keys.pt"):
        with pytest.raises(ValueError, match=f"{name} do not hold a state_dict"):
            read_state_dict(tmp_path / name)


def test_safetensors_without_metadata_give_an_empty_dict(tmp_path):
    """``read_safetensors_metadata`` promises a dict, empty when the header has none (not None)."""
    save_file(_state(), str(tmp_path / "bare.safetensors"))
    assert read_safetensors_metadata(tmp_path / "bare.safetensors") == {}


def test_dtypes_and_values_survive_both_formats(tmp_path):
    """Half, bfloat16, integer and boolean tensors come back with their own dtype and values (as the safetensors
    library itself reads them), from ``.safetensors`` and from a pickle alike."""
    from safetensors import safe_open

    state = {
        "half": torch.tensor([0.5, -2.0], dtype=torch.float16),
        "bf16": torch.tensor([1.5, 3.0], dtype=torch.bfloat16),
        "count": torch.tensor([[7, -8]], dtype=torch.int32),
        "flag": torch.tensor([True, False]),
        "double": torch.tensor([1 / 3], dtype=torch.float64),
    }
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        reference = {k: f.get_tensor(k) for k in f.keys()}
    for name in ("w.safetensors", "w.pth"):
        read = read_state_dict(tmp_path / name)
        assert sorted(read) == sorted(state)
        for key, tensor in state.items():
            assert read[key].dtype == tensor.dtype == reference[key].dtype, (name, key)
            assert read[key].device.type == "cpu" and torch.equal(read[key], reference[key]), (name, key)


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    """Pickles are read with ``weights_only=True``: a foreign checkpoint whose unpickling would call a function (here
    one that creates a file) is a one-line error and the function never runs."""
    marker = tmp_path / "ran"

    class _Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"layer.weight": torch.zeros(2), "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=re.escape(f"cannot read weights {tmp_path / 'evil.pt'}: it holds Python obj")):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_errors_give_the_whole_path_and_tell_missing_from_corrupt(tmp_path):
    save_file(_state(), str(tmp_path / "good.safetensors"))
    torch.save(_state(), tmp_path / "good.pt")
    whole = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.safetensors").write_text("not weights\n")
    for name in ("cut.pt", "text.safetensors"):
        with pytest.raises(ValueError, match=re.escape(f"cannot read weights {tmp_path / name}: the file is trunc")):
            read_state_dict(tmp_path / name)
    with pytest.raises(ValueError, match=re.escape(f"cannot read weights {tmp_path / 'good.pt'}: the file is trunc")):
        read_safetensors_metadata(tmp_path / "good.pt")  # a pickle is not safetensors
    for reader in (read_state_dict, read_safetensors_metadata):
        with pytest.raises(ValueError, match=re.escape(f"weights file not found: {tmp_path / 'gone.safetensors'}")):
            reader(tmp_path / "gone.safetensors")
        with pytest.raises(ValueError, match="weights file not found"):
            reader(tmp_path)  # a folder is no weights file


def test_only_a_mapping_under_state_dict_is_unwrapped(tmp_path):
    """A tensor that happens to be named ``state_dict`` is a weight like any other, not a Lightning wrapper."""
    state = {"state_dict": torch.ones(3), "other": torch.zeros(1)}
    save_file(state, str(tmp_path / "odd.safetensors"))
    read = read_state_dict(tmp_path / "odd.safetensors")
    assert sorted(read) == ["other", "state_dict"] and torch.equal(read["state_dict"], torch.ones(3))


def test_a_refused_pickle_is_named_without_torchs_advice_to_load_it_unsafely(tmp_path):
    """Random bytes and a pickle holding a date: the one-line error gives the unpickler's fact, not torch's paragraph
    about ``weights_only=False`` (which would run the file's code)."""
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 8)
    torch.save({"when": datetime.date(2020, 1, 1)}, tmp_path / "date.ckpt")
    for name, fact, what in (
        ("noise.ckpt", "Unsupported operand", "the file is truncated or corrupt ("),
        ("date.ckpt", "Unsupported global: GLOBAL datetime.date", "it holds Python objects beside its tensors ("),
    ):
        with pytest.raises(ValueError) as caught:
            read_state_dict(tmp_path / name)
        message = str(caught.value)
        assert "\n" not in message and "weights_only" not in message and fact in message
        assert message.startswith(f"cannot read weights {tmp_path / name}: {what}")


def test_the_format_is_told_by_content_and_wrappers_are_unwrapped(tmp_path):
    """A safetensors file under another suffix (``model.SAFETENSORS``, ``model.ckpt``) was read as a pickle and called
    corrupt; a monorecon training checkpoint (``{"step", "model", "optimizer"}``) and DDP's ``module.`` keys were not
    taken."""
    state = _state()
    for name in ("model.SAFETENSORS", "renamed.ckpt"):
        save_file(state, str(tmp_path / name))
        assert _equal(read_state_dict(tmp_path / name), state)
    torch.save({"step": 100, "model": state, "optimizer": {"state": {}}}, tmp_path / "step_00000100.pt")
    assert _equal(read_state_dict(tmp_path / "step_00000100.pt"), state)
    torch.save({f"module.{key}": value for key, value in state.items()}, tmp_path / "ddp.pt")
    assert _equal(read_state_dict(tmp_path / "ddp.pt"), state)
    mixed = {"module.a": torch.zeros(1), "b": torch.ones(1)}  # not every key: not DDP's prefix, kept
    torch.save(mixed, tmp_path / "mixed.pt")
    assert sorted(read_state_dict(tmp_path / "mixed.pt")) == ["b", "module.a"]


def _equal(read: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> bool:
    return read.keys() == state.keys() and all(torch.equal(read[key], state[key]) for key in state)
