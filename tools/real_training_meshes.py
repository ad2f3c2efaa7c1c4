"""Render real meshes into a training set (monorecon dataset layout, every object "train").

Four sources (``--source``), all fetched where they are published (nothing is committed to this repository):

* ``pybullet`` (the default): the meshes of the pybullet 3.2.7 wheel, which stage 14 of the bundled model trained on
  beside procedural objects (model card). They are robot and machine parts, a teddy bear, stones, balls, tables,
  trays, toys and the 1,000 irregular ``random_urdfs`` objects of ``pybullet_data``. Left out: the bunny (a test mesh
  of ``../shared/data``), the duck, the Lego figure and the mug (validation meshes,
  ``tools/real_validation_meshes.py``), scenes, ground planes and collision hulls. Each mesh (an ``.obj`` or ``.stl``
  member of the wheel, in sorted order; member ``i`` draws from ``numpy.random.default_rng([seed, i])``) is turned
  from the files' +Z up to +Y up and given a random yaw and one random colour.
* ``cgal``: 36 closed meshes of CGAL 5.5.1's demo data (Debian's ``libcgal-demo`` 5.5.1-2, its SHA-256 checked;
  CGAL's data files are under its GPL / LGPL licences): figures (Homer, an armadillo, a man), animals (a camel, an
  elephant, a bear, dinosaurs, an elk sculpture), a hand, bones, knots, a helmet, a cactus and machine parts. Left
  out: the bunny and the Chinese dragon (like test meshes), the cow and the bull (like validation meshes), open
  surfaces (masks, heads), scans with holes and test shapes (cubes, tetrahedra, patches). Each is turned +Y up
  (:data:`CGAL_MESHES`) and written ``--variants`` times (variant ``k`` of mesh ``i`` draws from
  ``default_rng([seed, i, k])``): a random yaw, a stretch along each axis by a random factor in [e^-0.2, e^0.2] and
  one random colour, so that a few dozen shapes make several hundred objects.
* ``sweethome3d``: the furniture libraries of Debian's ``sweethome3d-furniture`` 1.8-1 (its SHA-256 checked; the
  models are CC0 / CC-BY, creators listed in each ``.sh3f`` catalogue): about 800 household objects (furniture,
  lamps, kitchenware, tools, plants, vehicles) and 25 human figures, each an OBJ (its materials ignored). Left out:
  doors and windows (flat panels in a wall), and pieces whose catalogue name has a word of
  :data:`SWEETHOME3D_EXCLUDED` (like test or validation meshes: cups, teapots, planes...). Each is turned upright
  by its catalogue's ``modelRotation`` (the libraries are +Y up) and written ``--variants`` times as ``cgal`` meshes.
* ``zeroad``: the game models of Debian's ``0ad-data`` 0.0.26-1 (its SHA-256 checked; 0 A.D.'s art is (c) Wildfire
  Games, CC-BY-SA 3.0), read from the engine's cached meshes (``.pmd``, +Y up) in ``public.zip``: animals, buildings,
  ships, statues, carts, pottery, tools, stones and the props that furnish the buildings. Left out: the parts worn or
  carried by units (heads, helmets, shields, weapons, capes), trees and plants (leaves are flat cards), and names with
  a word of :data:`ZEROAD_EXCLUDED` (like test or validation meshes, or parts of a building: doors, sails, roofs);
  then meshes with fewer than :data:`ZEROAD_MIN_FACES` faces, flat ones (smallest extent under
  :data:`ZEROAD_MIN_ASPECT` of the largest), sparse ones (seen along an axis, covering under :data:`ZEROAD_MIN_FILL`
  of their bounding box: scattered props, fences, scaffolds; :func:`projected_fill`) and exact repeats (the same
  vertices and faces). Each is written ``--variants`` times as ``cgal`` meshes.

Every object is then normalised like the procedural objects and rendered as they are (8 views of 128 px, distance
1.9, fov 40, elevations -10..60). Meshes with fewer than 8 or more than 300,000 faces, and unreadable ones, are
skipped (listed on stderr). The same seed gives the same dataset for any number of workers.

    python tools/real_training_meshes.py -o /work/runs/s19/real --workers 2
    python tools/real_training_meshes.py --source cgal --seed 53 -o /work/runs/s23/cgal --workers 2
    python tools/real_training_meshes.py --source sweethome3d --variants 2 --seed 59 -o /work/runs/s25/sh3d_set
    python tools/real_training_meshes.py --source zeroad --variants 2 --seed 67 -o /work/runs/s27/zeroad
"""

from __future__ import annotations

import argparse
import io
import json
import re
import struct
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
import trimesh
from real_validation_meshes import WHEELS, download_deb, download_wheel

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
#: Debian package -> (version, URL, SHA-256 of the .deb) of the ``cgal`` source.
CGAL_DEB = {
    "libcgal-demo": (
        "5.5.1-2",
        "https://deb.debian.org/debian/pool/main/c/cgal/libcgal-demo_5.5.1-2_all.deb",
        "78b09b23d4d6d1bf15552a1060b419ab3fc09918486462faed197e5fc6ac3735",
    ),
}
#: The package's archive of CGAL's data folder, and the meshes' folder inside it.
CGAL_DATA, CGAL_MESH_DIR = "usr/share/doc/libcgal-dev/data.tar.gz", "data/meshes"
#: ``cgal`` meshes (``CGAL_MESH_DIR/NAME.off``) -> rotation about +X in degrees that puts them +Y up, in the order of
#: their index ``i``.
CGAL_MESHES = {
    "homer": 0.0, "hand": 0.0, "armadillo": 0.0, "cactus": 0.0, "dino": -90.0, "helmet": 0.0, "bear": 0.0,
    "camel": 0.0, "triceratops": 0.0, "elephant": 0.0, "diplodocus": 0.0, "elk": 0.0, "blobby": 0.0, "bones": 0.0,
    "femur": 90.0, "man": -90.0, "knot": 0.0, "knot1": 0.0, "knot2": 0.0, "eight": 0.0, "pinion": 0.0, "rotor": 0.0,
    "fandisk": 0.0, "joint": 0.0, "cross": 0.0, "anchor": 0.0, "turbine": 0.0, "couplingdown": 0.0, "handle": 0.0,
    "spool": 0.0, "dragknob": 0.0, "pipe": 0.0, "tripod": 0.0, "cheese": 0.0, "part": 0.0, "itemb": 0.0,
}  # fmt: skip
#: Half-width of the log of the ``cgal`` variants' stretch along each axis.
CGAL_LOG_STRETCH = 0.2
#: Debian package -> (version, URL, SHA-256 of the .deb) of the ``sweethome3d`` source.
SWEETHOME3D_DEB = {
    "sweethome3d-furniture": (
        "1.8-1",
        "https://deb.debian.org/debian/pool/main/s/sweethome3d-furniture/sweethome3d-furniture_1.8-1_all.deb",
        "3ccb90c63f9525e887a767b9cd5c8b6933b8b6b2973a615a5359ee68a2118668",
    ),
}
SWEETHOME3D_DIR = "usr/share/sweethome3d/furniture"
#: Words (of a lower-cased catalogue name) of the ``sweethome3d`` pieces left out: shapes like the test meshes
#: (``../shared/data``) and the validation meshes (``tools/real_validation_meshes.py``).
SWEETHOME3D_EXCLUDED = frozenset(
    "teapot teapots kettle bust bunny rabbit dragon monkey mug mugs cup cups duck cow bull ant spider bone engine nut "
    "lego plane airplane biplane aeroplane".split()
)
#: Debian package -> (version, URL, SHA-256 of the .deb) of the ``zeroad`` source.
ZEROAD_DEB = {
    "0ad-data": (
        "0.0.26-1",
        "https://deb.debian.org/debian/pool/main/0/0ad-data/0ad-data_0.0.26-1_all.deb",
        "53745ae74d05bccf6783400fa98f3932b21729ab9d2e86151aa2c331c3455178",
    ),
}
ZEROAD_ARCHIVE, ZEROAD_MESH_DIR = "usr/share/games/0ad/mods/public/public.zip", "art/meshes/"
#: Folders (under :data:`ZEROAD_MESH_DIR`) of the ``zeroad`` meshes left out: parts worn or carried by units, trees.
ZEROAD_EXCLUDED_DIRS = tuple(
    f"{folder}/"
    for folder in "props/armor props/campaigns props/elephant props/heads props/helmet props/horse props/new "
    "props/quivers props/shield props/standard props/weapons skeletal/campaigns skeletal/new gaia/campaigns "
    "gaia/trees temp test".split()
)
#: Words (of a lower-cased file name, split at ``_ - .`` and digits) of the ``zeroad`` meshes left out: like the test
#: or validation meshes (heads, skulls, bulls, rabbits...), worn or carried by units, plants, flat or not an object.
ZEROAD_EXCLUDED = frozenset(
    "head heads dude dudette skull skeleton bust teapot kettle jug mug cup duck bunny rabbit dragon monkey bull cow "
    "cattle auroch zebu sanga bone ant spider nut engine lego plane airplane aeroplane airtower arm helmet crest cape "
    "armor lorica greave shield scutum boss weap sword broadsword spear jav javelin verutum sarissa rhomphaia quiver "
    "bow arrow bolt sling maces scabbard axe club staff collar horns antlers tusk teeths blanket saddle oar flag "
    "decal wave marker target tree trees palm pine cypress cedar fir oak baobab bush shrub fern grass bamboo banana "
    "juniper poplar birch maple elm fig olive teak carob acacia deciduous banyan mangrove strangler kapok tamarix "
    "berry berries grape sapling forest leaves log waterfall cliff field plot orchard farm rice underbrush "
    "fishing net bird circle shoal ferns rubble tile tiles door doors gate sail sails decal foundation scaf scaffold "
    "plaza wall walls roof floor floortiles rooftiles steps props prop shields fence palisade banner awning".split()
)
ZEROAD_MIN_FACES, ZEROAD_MIN_ASPECT, ZEROAD_MIN_FILL = 40, 0.15, 0.3
SOURCES = ("pybullet", "cgal", "sweethome3d", "zeroad")


def training_members(wheel: zipfile.ZipFile) -> list[str]:
    """The wheel's mesh members used for training, sorted."""
    names = sorted(n for n in wheel.namelist() if n.lower().endswith((".obj", ".stl")))
    return [n for n in names if not any(part in n.lower() for part in EXCLUDED)]


def cgal_meshes(deb_archive) -> list[tuple[str, bytes]]:
    """(name, OFF file bytes) of :data:`CGAL_MESHES`, in order, from the opened ``libcgal-demo`` package.

    Raises:
        ValueError: the package lacks its data archive or one of the meshes.
    """
    if CGAL_DATA not in deb_archive.namelist():
        raise ValueError(f"{CGAL_DATA} is not in the libcgal-demo package")
    with tarfile.open(fileobj=io.BytesIO(deb_archive.read(CGAL_DATA))) as data:
        names = {name.removeprefix("./"): name for name in data.getnames()}
        meshes = []
        for name in CGAL_MESHES:
            member = names.get(f"{CGAL_MESH_DIR}/{name}.off")
            if member is None:
                raise ValueError(f"{CGAL_MESH_DIR}/{name}.off is not in the libcgal-demo package's data")
            meshes.append((name, data.extractfile(member).read()))
    return meshes


def _catalogue(text: str) -> dict[int, dict[str, str]]:
    """A Sweet Home 3D ``PluginFurnitureCatalog.properties`` as {piece number: {key: value}} (``key#N=value`` lines)."""
    pieces: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        found = re.fullmatch(r"\s*(\w+)#(\d+)\s*=\s*(.*?)\s*", line)
        if found:
            key, number, value = found.groups()
            pieces.setdefault(int(number), {})[key] = value
    return pieces


def sweethome3d_models(deb_archive) -> list[tuple[str, bytes, np.ndarray]]:
    """(catalogue id, OBJ bytes, (3, 3) rotation to +Y up) of the pieces used, from the opened
    ``sweethome3d-furniture`` package: its libraries in sorted order, each in catalogue order.

    Raises:
        ValueError: the package has no furniture library.
    """
    libraries = sorted(n for n in deb_archive.namelist() if n.startswith(SWEETHOME3D_DIR) and n.endswith(".sh3f"))
    if not libraries:
        raise ValueError(f"no furniture library (.sh3f) in {SWEETHOME3D_DIR} of the sweethome3d-furniture package")
    models = []
    for library in libraries:
        with zipfile.ZipFile(io.BytesIO(deb_archive.read(library))) as archive:
            members = set(archive.namelist())
            pieces = _catalogue(archive.read("PluginFurnitureCatalog.properties").decode("latin-1"))
            for number, piece in sorted(pieces.items()):
                words = set(re.findall(r"[a-z]+", piece.get("name", "").lower()))
                model = piece.get("model", "").lstrip("/")
                usable = model.lower().endswith(".obj") and model in members
                if not usable or piece.get("doorOrWindow") == "true" or words & SWEETHOME3D_EXCLUDED:
                    continue
                rotation = np.eye(3)
                if "modelRotation" in piece:
                    rotation = np.array(piece["modelRotation"].split(), dtype=np.float64).reshape(3, 3)
                models.append((piece.get("id", f"{Path(library).stem}#{number}"), archive.read(model), rotation))
    return models


def read_pmd(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertex positions and (F, 3) int64 faces of a 0 A.D. mesh (``.pmd``, version 4: a "PSMD"
    header, then vertices of position, normal, ``n`` UV pairs and four bone weights, then uint16 triangles).

    Raises:
        ValueError: not a version-4 PMD file, or truncated.
    """
    if len(data) < 24 or data[:4] != b"PSMD" or struct.unpack_from("<I", data, 4)[0] != 4:
        raise ValueError("not a version-4 PMD mesh")
    n_verts, n_uvs = struct.unpack_from("<II", data, 12)
    vertex = np.dtype([("position", "<f4", 3), ("normal", "<f4", 3), ("uv", "<f4", (n_uvs, 2)),
                       ("bones", "u1", 4), ("weights", "<f4", 4)])  # fmt: skip
    faces_at = 20 + n_verts * vertex.itemsize
    if len(data) < faces_at + 4:
        raise ValueError("truncated PMD mesh")
    (n_faces,) = struct.unpack_from("<I", data, faces_at)
    if len(data) < faces_at + 4 + 6 * n_faces:
        raise ValueError("truncated PMD mesh")
    verts = np.frombuffer(data, vertex, n_verts, 20)["position"].astype(np.float64)
    faces = np.frombuffer(data, "<u2", 3 * n_faces, faces_at + 4).reshape(-1, 3).astype(np.int64)
    if n_faces and faces.max() >= n_verts:
        raise ValueError("PMD face refers to a missing vertex")
    return verts, faces


def projected_fill(verts: np.ndarray, faces: np.ndarray, grid: int = 32, n_points: int = 30_000) -> np.ndarray:
    """(3,) fraction of the cells of a ``grid`` x ``grid`` raster over the mesh's bounding box, seen along x, y and z,
    that ``n_points`` surface samples (seed 0) fall in: about 0.8 for a sphere, 1 for a box, low for scattered parts."""
    points, _ = trimesh.sample.sample_surface(trimesh.Trimesh(verts, faces, process=False), n_points, seed=0)
    lo, span = points.min(axis=0), np.maximum(np.ptp(points, axis=0), 1e-12)
    cells = np.clip(((points - lo) / span * grid).astype(np.int64), 0, grid - 1)
    fill = np.zeros(3)
    for axis in range(3):
        u, w = [a for a in range(3) if a != axis]
        fill[axis] = len(np.unique(cells[:, u] * grid + cells[:, w])) / grid**2
    return fill


def zeroad_meshes(deb_archive) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(path under :data:`ZEROAD_MESH_DIR`, vertices, faces) of the ``zeroad`` meshes used, sorted by path, from the
    opened ``0ad-data`` package (filters: see the module docstring).

    Raises:
        ValueError: the package lacks ``public.zip``.
    """
    if ZEROAD_ARCHIVE not in deb_archive.namelist():
        raise ValueError(f"{ZEROAD_ARCHIVE} is not in the 0ad-data package")
    meshes, seen = [], set()
    with zipfile.ZipFile(io.BytesIO(deb_archive.read(ZEROAD_ARCHIVE))) as archive:
        for member in sorted(archive.namelist()):
            path = member.removeprefix(ZEROAD_MESH_DIR)
            if path == member or not path.endswith(".pmd") or path.startswith(ZEROAD_EXCLUDED_DIRS):
                continue
            if set(re.split(r"[^a-z]+", Path(path).name.lower())) & ZEROAD_EXCLUDED:
                continue
            try:
                verts, faces = read_pmd(archive.read(member))
            except ValueError as err:
                print(f"skipped {path}: {err}", file=sys.stderr)
                continue
            used = verts[np.unique(faces)] if len(faces) else verts[:0]
            extent = np.ptp(used, axis=0) if len(used) else np.zeros(3)
            key = (verts.tobytes(), faces.tobytes())
            if not ZEROAD_MIN_FACES <= len(faces) <= MAX_FACES or extent.min() < ZEROAD_MIN_ASPECT * extent.max():
                continue
            if key in seen:
                continue
            if projected_fill(verts, faces).min() < ZEROAD_MIN_FILL:
                continue
            seen.add(key)
            meshes.append((path, verts, faces))
    return meshes


def _load(name: str, data: bytes) -> trimesh.Trimesh | None:
    """The mesh of one file, or None (and a line on stderr) when it is unreadable or its face count out of range."""
    try:
        loaded = trimesh.load(trimesh.util.wrap_as_stream(data), file_type=Path(name).suffix[1:].lower(),
                              force="mesh", process=False)  # fmt: skip
    except Exception as err:  # trimesh raises many types for a corrupt file
        print(f"skipped {name}: {err}", file=sys.stderr)
        return None
    if not MIN_FACES <= len(loaded.faces) <= MAX_FACES:
        print(f"skipped {name}: {len(loaded.faces)} faces", file=sys.stderr)
        return None
    return loaded


def _yaw(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation about +Y by a random angle."""
    yaw = rng.uniform(0.0, 2.0 * np.pi)
    return np.array([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]])


def _write(out_dir: Path, object_id: str, verts: np.ndarray, faces: np.ndarray, rng: np.random.Generator,
           meta: dict) -> dict:  # fmt: skip
    """Normalise ``verts``, colour them with one random colour, render and write ``out_dir/object_id``; its index
    entry. A folder already there is kept if it holds this object (a rerun), refused otherwise."""
    verts = normalize_vertices(verts)
    colour = torch.tensor(rng.uniform(0.25, 0.9, 3), dtype=torch.float32)
    mesh = Mesh(torch.from_numpy(verts).float(), torch.from_numpy(np.asarray(faces, dtype=np.int64)),
                vertex_colors=colour.expand(len(verts), 3).clone())  # fmt: skip
    view_seed = int(rng.integers(0, 2**31))
    folder = out_dir / object_id
    if folder.exists():
        written = json.loads((folder / "meta.json").read_text())
        if written.get("source") != meta["source"] or written.get("view_seed") != view_seed:
            raise ValueError(f"{folder} holds another object ({written.get('source')}); write into a new folder")
    else:
        write_object(mesh, folder, n_views=8, size=128, seed=view_seed, class_name="real",
                     sampling=ViewSampling.at_distance(1.9, elevation_range_deg=(-10.0, 60.0)),
                     meta={"id": object_id, "split": "train", **meta})  # fmt: skip
    return {"id": object_id, "class": "real", "split": "train", "seed": meta["seed"], "path": object_id}


def render_member(out_dir: Path, item: tuple[int, str, bytes], seed: int) -> dict | None:
    """Render wheel member ``index`` into ``out_dir/r{index:05d}_real``; None (and a line on stderr) when skipped."""
    index, name, data = item
    rng = np.random.default_rng([seed, index])
    loaded = _load(name, data)
    if loaded is None:
        return None
    verts = np.asarray(loaded.vertices, dtype=np.float64) @ Z_UP_TO_Y_UP.T @ _yaw(rng).T
    return _write(out_dir, f"r{index:05d}_real", verts, loaded.faces, rng, {"seed": index, "source": name})


def render_cgal_mesh(out_dir: Path, item: tuple[int, str, bytes], seed: int, variants: int) -> list[dict]:
    """Render ``variants`` objects of CGAL mesh ``index`` into ``out_dir/c{index:03d}_{k:02d}_{name}``; [] (and a
    line on stderr) when skipped."""
    index, name, data = item
    angle = np.radians(CGAL_MESHES[name])
    upright = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    meta = {"seed": index, "source": f"{CGAL_MESH_DIR}/{name}.off"}
    return _render_variants(out_dir, f"c{index:03d}", name, _load(f"{name}.off", data), upright, [seed, index],
                            variants, meta)  # fmt: skip


def render_sweethome3d_model(
    out_dir: Path, item: tuple[int, str, bytes, np.ndarray], seed: int, variants: int
) -> list[dict]:
    """Render ``variants`` objects of furniture piece ``index`` into ``out_dir/h{index:03d}_{k:02d}_{id}``; [] (and a
    line on stderr) when skipped."""
    index, piece_id, data, rotation = item
    name = re.sub(r"[^A-Za-z0-9]+", "-", piece_id).strip("-")
    meta = {"seed": index, "source": piece_id}
    return _render_variants(out_dir, f"h{index:03d}", name, _load(f"{name}.obj", data), rotation, [seed, index],
                            variants, meta)  # fmt: skip


def render_zeroad_mesh(
    out_dir: Path, item: tuple[int, str, np.ndarray, np.ndarray], seed: int, variants: int
) -> list[dict]:
    """Render ``variants`` objects of 0 A.D. mesh ``index`` (filtered by :func:`zeroad_meshes`) into
    ``out_dir/z{index:04d}_{k:02d}_{name}``."""
    index, path, verts, faces = item
    meta = {"seed": index, "source": ZEROAD_MESH_DIR + path}
    loaded = trimesh.Trimesh(verts, faces, process=False)
    return _render_variants(out_dir, f"z{index:04d}", Path(path).name.split(".")[0], loaded, np.eye(3), [seed, index],
                            variants, meta)  # fmt: skip


def _render_variants(out_dir: Path, prefix: str, name: str, loaded: trimesh.Trimesh | None, upright: np.ndarray,
                     seed: list[int], variants: int, meta: dict) -> list[dict]:  # fmt: skip
    """Write ``variants`` objects ``{prefix}_{k:02d}_{name}`` of one mesh turned ``upright``: variant ``k`` draws a
    yaw, a stretch along each axis and a colour from ``default_rng([*seed, k])``."""
    if loaded is None:
        return []
    loaded.remove_unreferenced_vertices()  # stray vertices would shrink the object when it is normalised
    entries = []
    for k in range(variants):
        rng = np.random.default_rng([*seed, k])
        turn = _yaw(rng)
        stretch = np.exp(rng.uniform(-CGAL_LOG_STRETCH, CGAL_LOG_STRETCH, 3))
        verts = (np.asarray(loaded.vertices, dtype=np.float64) @ upright.T @ turn.T) * stretch
        variant_meta = {**meta, "seed": meta["seed"] * 100 + k}
        entries.append(_write(out_dir, f"{prefix}_{k:02d}_{name}", verts, loaded.faces, rng, variant_meta))
    return entries


def _render(shared: tuple[Path, int, int, str], item: tuple) -> list[dict]:
    out_dir, seed, variants, source = shared
    if source == "cgal":
        return render_cgal_mesh(out_dir, item, seed, variants)
    if source == "sweethome3d":
        return render_sweethome3d_model(out_dir, item, seed, variants)
    if source == "zeroad":
        return render_zeroad_mesh(out_dir, item, seed, variants)
    entry = render_member(out_dir, item, seed)
    return [] if entry is None else [entry]


def _items(source: str, wheel: Path | None, deb: Path | None, tmp: Path) -> list[tuple]:
    """(index, name, file bytes) of the meshes of ``source`` (``sweethome3d``: and the rotation to +Y up;
    ``zeroad``: (index, path, vertices, faces))."""
    if source == "cgal":
        meshes = cgal_meshes(download_deb("libcgal-demo", CGAL_DEB, deb))
        return [(index, name, data) for index, (name, data) in enumerate(meshes)]
    if source == "sweethome3d":
        models = sweethome3d_models(download_deb("sweethome3d-furniture", SWEETHOME3D_DEB, deb))
        return [(index, *model) for index, model in enumerate(models)]
    if source == "zeroad":
        return [(index, *mesh) for index, mesh in enumerate(zeroad_meshes(download_deb("0ad-data", ZEROAD_DEB, deb)))]
    archive = zipfile.ZipFile(wheel) if wheel else download_wheel(tmp, "pybullet", WHEELS["pybullet"])
    return [(index, name, archive.read(name)) for index, name in enumerate(training_members(archive))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="dataset folder")
    parser.add_argument("--source", choices=SOURCES, default="pybullet", help="which meshes (see above)")
    parser.add_argument("--wheel", type=Path, help="a pybullet 3.2.7 wheel already on disk (default: download it)")
    parser.add_argument("--deb", type=Path, help="cgal, sweethome3d, zeroad: the pinned package already on disk")
    parser.add_argument("--seed", type=int, default=45, help="master seed (stage 14: 45)")
    parser.add_argument(
        "--variants", type=int, default=16, help="cgal, sweethome3d, zeroad: objects written per mesh (default 16)"
    )
    parser.add_argument("--max-objects", type=int, help="only the first N meshes (for a quick look)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering side by side")
    args = parser.parse_args(argv)
    try:
        if args.max_objects is not None and args.max_objects < 1:  # a slice would silently drop members instead
            raise ValueError(f"--max-objects must be >= 1, got {args.max_objects}")
        check_int(args.workers, "--workers", 1, MAX_WORKERS)
        check_int(args.variants, "--variants", 1, 1000)
        with tempfile.TemporaryDirectory() as tmp:
            items = _items(args.source, args.wheel, args.deb, Path(tmp))[: args.max_objects]
        args.output.mkdir(parents=True, exist_ok=True)
        rendered = map_in_processes(
            _render, items, args.workers, shared=(args.output, args.seed, args.variants, args.source)
        )
        entries = [entry for found in rendered for entry in found]
        write_index(args.output, entries, seed=args.seed, n_views=8, size=128, classes=["real"])
    except (ValueError, OSError, zipfile.BadZipFile, tarfile.TarError) as err:
        print(f"real_training_meshes: error: {err}", file=sys.stderr)
        return 2
    print(f"{len(entries)} objects from {len(items)} meshes rendered into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
