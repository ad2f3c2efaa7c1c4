"""tools/real_validation_meshes.py fails with one line and writes nothing when the wheels cannot be had."""

import importlib.util
import subprocess
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
