"""Render the real meshes of the pybullet wheel into a training set (monorecon dataset layout, every object "train").

Stage 14 of the bundled model trained on these beside procedural objects (model card). The meshes are robot and
machine parts, a teddy bear, stones, balls, tables, trays, toys and the 1,000 irregular ``random_urdfs`` objects of
``pybullet_data``. Left out: the bunny (a test mesh of ``../shared/data``), the duck, the Lego figure and the mug
(validation meshes, ``tools/real_validation_meshes.py``), scenes, ground planes and collision hulls.

    python tools/real_training_meshes.py -o /work/runs/s19/real --workers 2

Each mesh (an ``.obj`` or ``.stl`` member of the wheel, in sorted order; member ``i`` draws from
``numpy.random.default_rng([seed, i])``) is turned from the files' +Z up to +Y up, given a random yaw and one random
colour, normalised like the procedural objects and rendered as they are (8 views of 128 px, distance 1.9, fov 40,
elevations -10..60). Meshes with fewer than 8 or more than 300,000 faces, and unreadable ones, are skipped (listed on
stderr). The same seed gives the same dataset for any number of workers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import trimesh
from real_validation_meshes import WHEELS, download_wheel

from monorecon.core.checks import check_int
from monorecon.core.mesh import Mesh
from monorecon.data import ViewSampling, write_index, write_object
from monorecon.data.shapes import normalize_vertices
from monorecon.parallel import MAX_WORKERS, map_in_processes

#: Substrings (of the lower-cased member path) of the meshes left out: test and validation meshes, scenes, hulls.
EXCLUDED = ("bunny", "duck", "lego", "mug", "plane", "terrain", "cloth", "stadium", "samurai", "_col", "vhacd",
            "collision", "walker", "parking")  # fmt: skip
MIN_FACES, MAX_FACES = 8, 300_000
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def training_members(wheel: zipfile.ZipFile) -> list[str]:
    """The wheel's mesh members used for training, sorted."""
    names = sorted(n for n in wheel.namelist() if n.lower().endswith((".obj", ".stl")))
    return [n for n in names if not any(part in n.lower() for part in EXCLUDED)]


def render_member(out_dir: Path, item: tuple[int, str, bytes], seed: int) -> dict | None:
    """Render member ``index`` into ``out_dir/r{index:05d}_real``; None (and a line on stderr) when skipped."""
    index, name, data = item
    rng = np.random.default_rng([seed, index])
    try:
        loaded = trimesh.load(trimesh.util.wrap_as_stream(data), file_type=Path(name).suffix[1:].lower(),
                              force="mesh", process=False)  # fmt: skip
    except Exception as err:  # trimesh raises many types for a corrupt file
        print(f"skipped {name}: {err}", file=sys.stderr)
        return None
    if not MIN_FACES <= len(loaded.faces) <= MAX_FACES:
        print(f"skipped {name}: {len(loaded.faces)} faces", file=sys.stderr)
        return None
    yaw = rng.uniform(0.0, 2.0 * np.pi)
    turn = np.array([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]])
    verts = normalize_vertices(np.asarray(loaded.vertices, dtype=np.float64) @ Z_UP_TO_Y_UP.T @ turn.T)
    colour = torch.tensor(rng.uniform(0.25, 0.9, 3), dtype=torch.float32)
    mesh = Mesh(torch.from_numpy(verts).float(), torch.from_numpy(np.asarray(loaded.faces, dtype=np.int64)),
                vertex_colors=colour.expand(len(verts), 3).clone())  # fmt: skip
    object_id, view_seed = f"r{index:05d}_real", int(rng.integers(0, 2**31))
    folder = out_dir / object_id
    if folder.exists():  # a rerun keeps the objects already written, if they are this run's
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("source") != name or meta.get("view_seed") != view_seed:
            raise ValueError(f"{folder} holds another object ({meta.get('source')}); write into a new folder")
    else:
        write_object(mesh, folder, n_views=8, size=128, seed=view_seed, class_name="real",
                     sampling=ViewSampling.at_distance(1.9, elevation_range_deg=(-10.0, 60.0)),
                     meta={"id": object_id, "split": "train", "seed": index, "source": name})  # fmt: skip
    return {"id": object_id, "class": "real", "split": "train", "seed": index, "path": object_id}


def _render(shared: tuple[Path, int], item: tuple[int, str, bytes]) -> dict | None:
    return render_member(shared[0], item, shared[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="dataset folder")
    parser.add_argument("--wheel", type=Path, help="a pybullet 3.2.7 wheel already on disk (default: download it)")
    parser.add_argument("--seed", type=int, default=45, help="master seed (stage 14: 45)")
    parser.add_argument("--max-objects", type=int, help="only the first N members (for a quick look)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering side by side")
    args = parser.parse_args(argv)
    try:
        if args.max_objects is not None and args.max_objects < 1:  # a slice would silently drop members instead
            raise ValueError(f"--max-objects must be >= 1, got {args.max_objects}")
        check_int(args.workers, "--workers", 1, MAX_WORKERS)
        with tempfile.TemporaryDirectory() as tmp:
            if args.wheel:
                wheel = zipfile.ZipFile(args.wheel)
            else:
                wheel = download_wheel(Path(tmp), "pybullet", WHEELS["pybullet"])
            names = training_members(wheel)[: args.max_objects]
            items = [(index, name, wheel.read(name)) for index, name in enumerate(names)]
        args.output.mkdir(parents=True, exist_ok=True)
        rendered = map_in_processes(_render, items, args.workers, shared=(args.output, args.seed))
        entries = [entry for entry in rendered if entry is not None]
        write_index(args.output, entries, seed=args.seed, n_views=8, size=128, classes=["real"])
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        print(f"real_training_meshes: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(entries)} of {len(items)} meshes rendered into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
