"""Every CLI command answers bad input with one line on stderr and exit code 2 (no traceback); `--version`."""

import subprocess
import sys

import pytest

import monorecon
from monorecon.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["render", "{tmp}/missing.glb"], "missing.glb"),
        (["render", "{tmp}/empty"], "no mesh"),
        (["render", "{tmp}/flat.obj", "-o", "{tmp}/t"], "every triangle has zero area (no surface)"),
        (["render", "{tmp}/flat.obj", "-o", "{tmp}/corrupt.ply/new/t"], "{tmp}/corrupt.ply is a file"),
        (["render", "{tmp}/flat.obj", "-o", "{tmp}/t", "--fps", "0"], "--fps must lie in [1, 240]"),
        (["render", "{tmp}/flat.obj", "--frames", "0"], "--frames must lie in [1, 3600], got 0"),
        (["render", "{tmp}/flat.obj", "--size", "4000"], "--size must lie in [16, 2048], got 4000"),
        (["render", "{tmp}/flat.obj", "--frames", "3600", "--size", "2048"], "would need 42.2 GiB (at most 2)"),
        (["render", "{tmp}/flat.obj", "-o", "{tmp}/corrupt.ply/t"], "folder {tmp}/corrupt.ply is a file"),
        (
            ["render", "{tmp}/flat.obj", "-o", "{tmp}/empty/t", "--html"],
            "cannot write {tmp}/empty/t.html: it is a folder",
        ),
        (["fit-pose", "{tmp}/flat.obj", "{tmp}/corrupt.png", "-o", "{tmp}/corrupt.ply"], "is not a folder"),
        (["reconstruct", "{tmp}/corrupt.png", "-o", "{tmp}/corrupt.ply/out"], "{tmp}/corrupt.ply is a file"),
        (["convert", "{tmp}/missing.glb", "{tmp}/out.usdz"], "mesh file not found"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/out.usdz"], "could not read mesh"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/out.fbx"], "the suffix must be one of"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/missing/out.glb"], "folder {tmp}/missing does not exist"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/out.ply", "--bake-texture"], "PLY files carry no texture"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/out.glb", "--texture-resolution", "8"], "--texture-resolution"),
        (["convert", "{tmp}/corrupt.ply", "{tmp}/out.glb", "--object-height", "-1"], "--object-height must lie"),
        (["data", "synth", "--n", "1", "--classes", "spaceship", "-o", "{tmp}/d"], "unknown classes"),
        (["data", "synth", "--n", "1", "--classes", "classic,dragon", "-o", "{tmp}/d"], "unknown classes ['dragon']"),
        (["data", "synth", "--n", "1", "--classes", ",", "-o", "{tmp}/d"], "non-empty"),
        (["data", "synth", "--n", "1", "--camera-distance", "0.4", "-o", "{tmp}/d"], "camera distance must lie in"),
        (["data", "synth", "--n", "1", "--camera-distance", "1e6", "-o", "{tmp}/d"], "far plane"),
        (["data", "synth", "--n", "1", "--camera-distance", "nan", "-o", "{tmp}/d"], "camera distance must lie in"),
        (["data", "synth", "--n", "1", "--stretch", "0.5", "-o", "{tmp}/d"], "stretch must be"),
        (["data", "synth", "--n", "1", "--elevations", "40", "10", "-o", "{tmp}/d"], "--elevations LOW HIGH must"),
        (["data", "synth", "--n", "1", "--elevations", "-10", "90", "-o", "{tmp}/d"], "--elevations"),
        (["data", "synth", "--n", "1", "--elevations", "0", "nan", "-o", "{tmp}/d"], "--elevations"),
        (["train", "{tmp}/missing.yaml"], "missing.yaml"),
        (["eval", "--model", "sphere", "--data", "{tmp}/missing", "-o", "{tmp}/r"], "missing"),
        (["eval", "--model", "default", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--threshold", "nan"], "threshold"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--azimuths", "30,abc"], "--azimuths"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--azimuths", ","], "azimuths"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--azimuths", "0,nan"], "azimuths"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--elevation", "90"], "elevation"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--elevation", "nan"], "elevation"),
        (
            ["eval", "--model", "inflation", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--inflation-thickness", "0"],
            "inflation_thickness",
        ),
        (["metrics", "{tmp}/corrupt.ply", "{tmp}/missing.ply"], "could not read mesh"),
        (
            ["metrics", "{tmp}/corrupt.ply", "{tmp}/corrupt.ply", "--points", "50"],
            "--points must lie in [100, 1000000], got 50",
        ),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--seed", "-1"], "seed must lie in"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--points", "5"], "--points must lie"),
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--mc-resolution", "1"],
            "--mc-resolution applies only to models",
        ),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--max-objects", "0"], "max_objects"),
        (  # before the (missing) weights are loaded
            ["eval", "--model", "{tmp}/missing.ckpt", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--mc-resolution", "1"],
            "--mc-resolution must lie in [8, 1024], got 1",
        ),
        (
            ["eval", "--model", "default", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--threshold", "0"],
            "threshold must",
        ),
        # Options that do not apply are refused, not ignored (the report would not be what the command says).
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--threshold", "5", "--no-carve"],
            "--threshold, --no-carve apply only to models",
        ),
        (["eval", "--export-inputs", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--prepare"], "--prepare applies only"),
        (
            ["eval", "--export-inputs", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--points", "500", "--workers", "2"],
            "--points, --workers apply only to scoring (not --export-inputs)",
        ),
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--inflation-profile", "round"],
            "--inflation-profile applies only to --model inflation",
        ),
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty/set", "-o", "{tmp}/r", "--azimuths", "0,90"],
            "--azimuths applies only to folders of mesh files",
        ),
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty/set", "-o", "{tmp}/r", "--elevation", "35"],
            "--elevation applies only to folders of mesh files",
        ),
        (
            ["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--split", "test"],
            "--split applies only to synthetic datasets",
        ),
        (["eval", "--model", "default", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--volume-iou", "4"], "--volume-iou"),
        (["metrics", "{tmp}/corrupt.ply", "{tmp}/corrupt.ply", "--volume-iou", "-1"], "--volume-iou must lie in"),
        (["fit-pose", "{tmp}/missing.ply", "{tmp}/missing.png", "-o", "{tmp}/p"], "missing"),
        (
            ["fit-pose", "{tmp}/missing.ply", "{tmp}/missing.png", "-o", "{tmp}/p", "--refine-steps", "-1"],
            "--refine-steps must be >= 0 (0: no refinement), got -1",
        ),
        (
            ["convert", "{tmp}/flat.obj", "{tmp}/x.glb", "--target-faces", "2"],
            "--target-faces must lie in [4,",
        ),
        (["fit-pose", "{tmp}/corrupt.ply", "{tmp}/corrupt.png", "-o", "{tmp}/p"], "corrupt"),
        (["train-meshgan", "{tmp}/missing.yaml", "-o", "{tmp}/g"], "missing.yaml"),
        (["invert", "{tmp}/corrupt.png", "--generator", "{tmp}/missing", "-o", "{tmp}/i"], "missing"),
        (
            ["invert", "{tmp}/corrupt.png", "--generator", "{tmp}/missing", "-o", "{tmp}/i", "--object-height", "0"],
            "--object-height must lie in [1e-06, 1000]",
        ),
        (
            ["invert", "{tmp}/corrupt.png", "--generator", "{tmp}/missing", "-o", "{tmp}/i", "--size", "8"],
            "--size must lie in [16, 4096], got 8",
        ),
        (["train-g3dr", "{tmp}/missing.yaml"], "missing.yaml"),
        (["train-g3dr-diffusion", "{tmp}/missing.yaml"], "missing.yaml"),
        (["g3dr"], "usage"),
        (["g3dr", "sample", "--class", "mug", "-n", "0", "--diffusion", "x", "--model", "y", "-o", "z"], "-n"),
        (["g3dr", "{tmp}/corrupt.png", "--model", "{tmp}/missing", "-o", "{tmp}/o"], "missing"),
        (["g3dr", "{tmp}/corrupt.png", "--model", "{tmp}/missing", "-o", "{tmp}/o", "--threshold", "-1"], "threshold"),
        (
            ["g3dr", "{tmp}/corrupt.png", "--model", "{tmp}/missing", "-o", "{tmp}/o", "--object-height", "nan"],
            "--object-height must lie in [1e-06, 1000]",
        ),
        (["eval", "--model", "default", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--device", "gpu"], "--device must"),
        (["eval", "--model", "default", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--device", "cuda:64"], "--device"),
        (["eval", "--model", "sphere", "--data", "{tmp}/empty", "-o", "{tmp}/r", "--workers", "0"], "--workers must"),
        (["serve", "--device", "gpu"], "--device must"),
        (["webui", "--device", "cuda:64"], "--device 'cuda:64'"),
        (["serve", "--port", "0"], "--port"),
        (["webui", "--port", "70000"], "--port"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "t.html").mkdir()  # an output path taken by a folder
    (tmp_path / "empty" / "set").mkdir()  # a synthetic dataset (its index is not read before the options are checked)
    (tmp_path / "empty" / "set" / "index.json").write_text("{}")
    (tmp_path / "corrupt.ply").write_bytes(b"ply\nnot really")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    (tmp_path / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # one face of zero area
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert message.format(tmp=tmp_path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.ply",
        "corrupt.png",
        "empty",
        "flat.obj",
    ]  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "a.png", "-o", "out", "--threshold", "abc"],
         "argument --threshold: invalid float value: 'abc' (see `monorecon reconstruct --help`)"),
        (["reconstruct", "a.png"], "the following arguments are required: -o/--output"),
        (["data", "synth", "--n", "many", "-o", "d"], "(see `monorecon data synth --help`)"),
        (["g3dr", "sample", "--class", "mug"], "(see `monorecon g3dr sample --help`)"),
        (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("monorecon: error: ") and err.count("\n") == 1, err
    assert message in err


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    import monorecon

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"monorecon {monorecon.__version__} (torch {version('torch')}, Python 3.")
    assert version("monorecon") == monorecon.__version__  # pyproject reads it from the package: one source


@pytest.mark.parametrize("module", ["monorecon", "monorecon.cli"])
def test_python_dash_m_runs_the_command(module, capsys):
    import subprocess
    import sys

    with pytest.raises(SystemExit):
        main(["--version"])
    expected = capsys.readouterr().out
    run = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == expected, run.stderr
    run = subprocess.run([sys.executable, "-m", module, "render"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("monorecon: error: ") and run.stderr.count("\n") == 1


def test_the_command_line_parses_its_arguments_without_pytorch():
    """``monorecon --help`` and argument errors answer at once: the package's public names, and the command line's
    modules, import PyTorch (seconds) only when a command does its work."""
    code = (
        "import sys, monorecon, monorecon.cli, monorecon.io, monorecon.models; "
        "print(sorted(name for name in ('torch', 'transformers', 'scipy', 'trimesh') if name in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    assert callable(monorecon.reconstruct) and monorecon.io.MESH_FORMATS[0] == "glb"  # the lazy names resolve
