"""Damaged datasets are reported, never used half-read, and ``data synth`` reruns never mix datasets (user trial)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monorecon.core.checks import SkippedInputWarning
from monorecon.data import MultiViewDataset, synthesize_dataset
from monorecon.data.dataset import SPLITS
from monorecon.io.atomic import atomic_write
from test_data import _write_objaverse_object
from test_docs_examples import python_blocks

REPO = Path(__file__).resolve().parents[1]


def _copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_dataset, tmp_path / "copy"))


def _scramble_pixel_data(path: Path) -> None:
    """Flip the bits of a PNG's compressed pixel data and fix the chunk's CRC: the file's checksums all hold."""
    raw = bytearray(path.read_bytes())
    start = raw.find(b"IDAT")
    length = struct.unpack(">I", raw[start - 4 : start])[0]
    data = bytes(b ^ 0x5A if 2 <= k < length - 4 else b for k, b in enumerate(raw[start + 4 : start + 4 + length]))
    raw[start + 4 : start + 4 + length] = data
    raw[start + 4 + length : start + 8 + length] = struct.pack(">I", zlib.crc32(b"IDAT" + data))
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------------------------
def test_a_png_whose_pixel_data_does_not_decode_skips_its_object_at_build(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    broken = root / "000001_chair" / "rgba" / "000.png"
    _scramble_pixel_data(broken)
    with Image.open(broken) as img:
        img.verify()  # the chunk checksums alone pass
    with pytest.warns(SkippedInputWarning, match=re.escape(f"cannot read image {broken}")):
        ds = MultiViewDataset(root, split="all")
    assert [o.object_id for o in ds.objects] == ["000000_mug"]
    assert ds[0]["images"].shape == (2, 32, 32, 4)  # what is kept reads


@pytest.mark.parametrize("verify", [True, False])
def test_an_rgb_view_in_the_monorecon_layout_skips_its_object(tiny_dataset, tmp_path, verify):
    """The layout stores RGBA: an RGB view would be read as wholly opaque, its background taken for the object."""
    root = _copy(tiny_dataset, tmp_path)
    rgb = root / "000001_chair" / "rgba" / "001.png"
    Image.open(rgb).convert("RGB").save(rgb)
    message = re.escape(f"{rgb} has no alpha channel (RGBA expected)")
    if verify:
        with pytest.warns(SkippedInputWarning, match=message):
            ds = MultiViewDataset(root, split="all")
        assert [o.object_id for o in ds.objects] == ["000000_mug"]
    else:  # found when the item is read
        with pytest.raises(ValueError, match=message):
            MultiViewDataset(root, split="all", verify=False)[1]


def test_images_are_read_as_stored_whatever_their_exif_orientation(tiny_dataset, tmp_path):
    """The cameras refer to the stored pixels: an EXIF rotation tag must not turn a view against its camera."""
    root = _copy(tiny_dataset, tmp_path)
    expected = MultiViewDataset(root, split="all")[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    for path in (root / "000000_mug" / "rgba" / "000.png", root / "000000_mug" / "normals" / "000.png"):
        with Image.open(path) as img:
            pixels = img.copy()
        with atomic_write(path) as f:
            pixels.save(f, format="PNG", exif=exif)
        with Image.open(path) as img:
            assert img.getexif()[0x0112] == 6
    item = MultiViewDataset(root, split="all")[0]
    assert not np.allclose(np.rot90(expected["images"][0].numpy(), -1), expected["images"][0].numpy())  # it shows
    np.testing.assert_array_equal(item["images"].numpy(), expected["images"].numpy())
    np.testing.assert_array_equal(item["normals"].numpy(), expected["normals"].numpy())


def test_an_index_entry_with_an_unknown_split_is_reported(tiny_dataset, tmp_path):
    root = _copy(tiny_dataset, tmp_path)
    index = json.loads((root / "index.json").read_text())
    index["objects"][0]["split"] = "trian"
    (root / "index.json").write_text(json.dumps(index))
    expected = f"skipping object '000000_mug' of {root / 'index.json'}: unknown split 'trian', not one of {SPLITS}"
    for split in ("all", index["objects"][1]["split"]):
        with pytest.warns(SkippedInputWarning, match=re.escape(expected)):
            ds = MultiViewDataset(root, split=split)
        assert [o.object_id for o in ds.objects] == ["000001_chair"]


def test_objaverse_views_after_a_gap_skip_the_object(tmp_path):
    """001 missing but 002 present: the object is skipped by name, not silently cut to one view."""
    for name in ("good", "gap"):
        _write_objaverse_object(tmp_path / name, [np.eye(4)] * 3)
    for suffix in (".png", ".npy"):
        (tmp_path / "gap" / f"001{suffix}").unlink()
    with pytest.warns(SkippedInputWarning, match=re.escape(f"{tmp_path / 'gap'}: view 001 is missing")) as caught:
        ds = MultiViewDataset(tmp_path, split="all")
    assert "but 002.npy exists" in str(caught[0].message)
    assert [o.object_id for o in ds.objects] == ["good"] and ds[0]["images"].shape[0] == 3


def test_a_camera_file_with_nan_says_so(tmp_path):
    _write_objaverse_object(tmp_path / "good", [np.eye(4)])
    _write_objaverse_object(tmp_path / "nan", [np.eye(4), np.full((3, 4), np.nan)])
    npy = tmp_path / "nan" / "001.npy"
    with pytest.warns(SkippedInputWarning, match=re.escape(f"{npy}: camera matrix has NaN or infinite values")):
        ds = MultiViewDataset(tmp_path, split="all")
    assert [o.object_id for o in ds.objects] == ["good"]


def test_the_documented_route_for_own_meshes_gives_a_readable_dataset(tmp_path, monkeypatch):
    """The example of ``docs/dataset_format.md`` that writes meshes with ``write_object``, run as written."""
    (block,) = [b for b in python_blocks(REPO / "docs" / "dataset_format.md") if "write_object(" in b]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "dataset_format.md", "exec"), namespace)
    ds = namespace["dataset"]
    assert ds.layout == "monorecon" and len(ds) == 2
    assert [ds[i]["class_name"] for i in range(2)] == ["mug", "vase"] and ds[0]["has_depth"]


# --------------------------------------------------------------------------------------------------------------------
# data synth reruns
# --------------------------------------------------------------------------------------------------------------------
_SMALL = {"n_views": 2, "size": 8, "seed": 0, "progress": False}


def test_a_rerun_removes_the_temporary_folders_a_killed_run_left(tmp_path):
    stale = tmp_path / "d" / ".000000_mug.sl7ajl56.tmp"
    (stale / "rgba").mkdir(parents=True)
    (stale / "rgba" / "000.png").write_bytes(b"half")
    root = synthesize_dataset(tmp_path / "d", 1, **_SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["000000_mug", "index.json", "manifest.csv"]


@pytest.mark.parametrize(("first", "second"), [({"n_objects": 2}, {"n_objects": 1}), ({}, {"classes": ["vase"]})])
def test_a_rerun_that_would_leave_objects_out_of_the_index_is_refused(tmp_path, first, second):
    """A smaller count or other classes would rewrite the index without the objects on disk."""
    root = synthesize_dataset(tmp_path / "d", **{"n_objects": 1, **first}, **_SMALL)
    index = (root / "index.json").read_bytes()
    with pytest.raises(ValueError, match=r"holds 1 object folder\(s\) this run would not list, e\.g\. 00000._"):
        synthesize_dataset(root, **{"n_objects": 1, **second}, **_SMALL)
    assert (root / "index.json").read_bytes() == index
    assert not (root / "000000_vase").exists()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [("rgba/001.png", "no rgba/001.png"), ("meta.json", "meta.json is missing or unreadable")],
)
def test_a_rerun_reports_a_damaged_object(tmp_path, damage, problem):
    root = synthesize_dataset(tmp_path / "d", 2, **_SMALL)
    (root / "000001_chair" / damage).unlink()
    expected = f"{root / '000001_chair'} is damaged or incomplete ({problem}); remove it to have it rendered again"
    with pytest.raises(ValueError, match=re.escape(expected)):
        synthesize_dataset(root, 2, **_SMALL)
    shutil.rmtree(root / "000001_chair")  # as the message says
    synthesize_dataset(root, 2, **_SMALL)
    assert len(MultiViewDataset(root, split="all")) == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--n", "0"], "--n must lie in [1, 10000000]"),
        (["--n", "1", "--views", "0"], "--views must lie in [1, 1024]"),
        (["--n", "1", "--size", "0"], "--size must lie in [1, 2048]"),
        (["--n", "1", "--seed", "-1"], "--seed must be a non-negative integer"),
        (["--n", "1", "--elevations", "10", "-10"], "--elevations LOW HIGH must satisfy -90 < LOW <= HIGH < 90"),
    ],
)
def test_data_synth_errors_name_the_flags(tmp_path, capsys, flags, message):
    from monorecon.cli import main

    assert main(["data", "synth", *flags, "-o", str(tmp_path / "d"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
