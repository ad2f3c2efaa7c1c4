"""Procedural 3-D objects in named classes, and real meshes normalised the same way.

Every object is built from closed, outward-oriented trimesh primitives (lathes, cylinders, cones, boxes, spheres,
tori, extruded triangles, and for the organic classes bumpy ellipsoids and swept tubes) that are concatenated
(parts may interpenetrate; no boolean union). Vertices are duplicated along sharp edges (dihedral angle > 40 deg) so
that renderers interpolating vertex normals keep those edges hard: the mesh is therefore closed *geometrically* (merge
coincident vertices to get a watertight index mesh). Parts get vertex colours from a random palette with simple
patterns (horizontal / vertical stripes, checks, sprinkles); organic objects are plain grey in 40 % of cases, like
untextured scans and sculpts.

Frame (monorecon world, see :mod:`monorecon.core.cameras`): **+Y up**, the object rests on its base (its lowest
points lie on the plane ``y = min y``), its **front faces +Z** (a chair's open side and a car's bonnet point to +Z;
a mug's handle is on its right, +X, seen from the front). After building, objects are normalised by
:func:`normalize_vertices`: the bounding-box centre goes to the origin and the farthest vertex to ``radius``
(default 0.5), so every object fits the sphere of radius 0.5 around the origin.

Determinism: :func:`make_object` draws every random choice from ``numpy.random.default_rng(seed)``, so a seed
always gives identical arrays.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from monorecon.core.mesh import Mesh
from monorecon.io.mesh_io import load_mesh

__all__ = [
    "CLASSIC_CLASSES",
    "DEFAULT_RADIUS",
    "ORGANIC_CLASSES",
    "SHAPE_CLASSES",
    "load_normalized_mesh",
    "make_object",
    "normalize_vertices",
]

DEFAULT_RADIUS = 0.5

# Edges between faces meeting at more than this angle get split vertices (hard edges under smooth shading).
_CREASE_DEG = 40.0
# Rotation taking trimesh's primitive axis (+Z) to our up axis (+Y): (x, y, z) -> (x, z, -y).
_Z_TO_Y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1.0, 0.0, 0.0])


# --------------------------------------------------------------------------------------------------------------------
# Parts: geometry + per-vertex colours
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class _Part:
    """One closed piece of an object: vertices (N, 3), faces (M, 3) and vertex colours (N, 3) in [0, 1]."""

    verts: np.ndarray
    faces: np.ndarray
    colors: np.ndarray


def _part(tm: trimesh.Trimesh, color: np.ndarray | Callable[[np.ndarray], np.ndarray]) -> _Part:
    """Wrap a trimesh primitive; ``color`` is an RGB triple or a function of the (N, 3) vertices."""
    if tm.volume < 0:  # keep outward normals whatever the profile direction was
        tm.invert()
    # Duplicate vertices along sharp edges so that smooth (vertex-normal) shading keeps them sharp.
    tm = trimesh.graph.smooth_shade(tm, angle=math.radians(_CREASE_DEG), facet_minarea=None)
    verts = np.asarray(tm.vertices, dtype=np.float64)
    colors = color(verts) if callable(color) else np.broadcast_to(np.asarray(color, np.float64), verts.shape)
    return _Part(verts, np.asarray(tm.faces, dtype=np.int64), np.array(colors, dtype=np.float64))


def _axis_transform(axis: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    """4x4 transform taking the +Z axis to ``axis`` and the origin to ``origin``."""
    transform = trimesh.geometry.align_vectors([0.0, 0.0, 1.0], np.asarray(axis, dtype=np.float64))
    transform[:3, 3] = origin
    return transform


def _lathe(profile: list[tuple[float, float]], sections: int = 32, max_step: float = 0.06) -> trimesh.Trimesh:
    """Solid of revolution about the +Y axis; ``profile`` is a list of (radius, y) starting and ending on the axis.

    Profile segments are split to at most ``max_step`` so that vertex-colour stripes have rings to live on.
    """
    points = np.asarray(profile, dtype=np.float64)
    dense = [points[:1]]
    for start, end in itertools.pairwise(points):
        steps = max(1, math.ceil(np.linalg.norm(end - start) / max_step))
        dense.append(start + (end - start) * (np.arange(1, steps + 1) / steps)[:, None])
    tm = trimesh.creation.revolve(np.concatenate(dense), sections=sections)
    return tm.apply_transform(_Z_TO_Y)


def _cylinder(radius: float, height: float, base: tuple, axis: tuple = (0, 1, 0), sections: int = 24):
    """Cylinder whose base disc is centred at ``base`` and which extends ``height`` along ``axis``."""
    axis_n = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    centre = np.asarray(base, dtype=np.float64) + 0.5 * height * axis_n
    return trimesh.creation.cylinder(radius, height, sections=sections, transform=_axis_transform(axis, centre))


def _cone(radius: float, height: float, base: tuple, axis: tuple = (0, 1, 0), sections: int = 24):
    """Cone with its base disc centred at ``base`` and its apex ``height`` along ``axis``."""
    return trimesh.creation.cone(radius, height, sections=sections, transform=_axis_transform(axis, base))


def _box(extents: tuple, centre: tuple, subdivisions: int = 0) -> trimesh.Trimesh:
    """Axis-aligned box; each subdivision splits every face in 4 (kept closed) so patterns can show on it."""
    tm = trimesh.creation.box(extents, transform=trimesh.transformations.translation_matrix(centre))
    for _ in range(subdivisions):
        tm = tm.subdivide()
    return tm


def _sphere(radius: float, centre: tuple, subdivisions: int = 2) -> trimesh.Trimesh:
    tm = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return tm.apply_translation(centre)


def _torus(major: float, minor: float, centre: tuple, normal: tuple = (0, 1, 0), sections=(32, 12)):
    """Torus around ``normal`` (its ring lies in the plane orthogonal to it)."""
    return trimesh.creation.torus(major, minor, sections[0], sections[1], transform=_axis_transform(normal, centre))


def _prism(triangle: np.ndarray, thickness: float, transform: np.ndarray) -> trimesh.Trimesh:
    """Triangle (3, 2) in the local XY plane, extruded by ``thickness`` along local Z (centred), then transformed."""
    tm = trimesh.creation.extrude_triangulation(np.asarray(triangle, np.float64), np.array([[0, 1, 2]]), thickness)
    tm.apply_translation([0.0, 0.0, -0.5 * thickness])
    return tm.apply_transform(transform)


# --------------------------------------------------------------------------------------------------------------------
# Colours and patterns
# --------------------------------------------------------------------------------------------------------------------
def _random_color(rng: np.random.Generator, saturation=(0.35, 0.9), value=(0.45, 0.95)) -> np.ndarray:
    hue = rng.uniform()
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value)))


def _contrast_color(color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour with a hue at least 90 degrees away from ``color`` (for stripes and accents)."""
    hue, sat, val = colorsys.rgb_to_hsv(*color)
    hue = (hue + rng.uniform(0.25, 0.75)) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, max(sat, 0.4), 1.0 - 0.6 * val + 0.3))


def _pattern(rng: np.random.Generator, base: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A random vertex-colour pattern: solid, horizontal stripes, vertical stripes (around Y) or checks."""
    kind = rng.choice(["solid", "hstripes", "vstripes", "checks"])
    accent = _contrast_color(base, rng)
    period = rng.uniform(0.08, 0.2)
    n_sectors = int(rng.integers(4, 9)) * 2

    def paint(verts: np.ndarray) -> np.ndarray:
        band = np.floor(verts[:, 1] / period).astype(np.int64)
        sector = np.floor((np.arctan2(verts[:, 0], verts[:, 2]) + math.pi) / (2 * math.pi) * n_sectors)
        sector = sector.astype(np.int64)
        use_accent = {
            "solid": np.zeros(len(verts), dtype=bool),
            "hstripes": band % 2 == 1,
            "vstripes": sector % 2 == 1,
            "checks": (band + sector) % 2 == 1,
        }[kind]
        return np.where(use_accent[:, None], accent, base)

    return paint


# --------------------------------------------------------------------------------------------------------------------
# Object classes (each returns parts in an un-normalised Y-up frame, front +Z)
# --------------------------------------------------------------------------------------------------------------------
def _build_mug(rng: np.random.Generator) -> list[_Part]:
    radius, height = rng.uniform(0.25, 0.4), rng.uniform(0.55, 1.0)
    wall, bottom = rng.uniform(0.02, 0.05), rng.uniform(0.03, 0.08)
    body_color = _random_color(rng)
    body = _lathe(
        [(0, 0), (radius, 0), (radius, height), (radius - wall, height), (radius - wall, bottom), (0, bottom)]
    )
    handle_major = rng.uniform(0.25, 0.4) * height
    handle = _torus(handle_major, rng.uniform(0.025, 0.05), (radius + 0.3 * handle_major, height / 2, 0), (0, 0, 1))
    handle_color = body_color if rng.uniform() < 0.5 else _random_color(rng)
    return [_part(body, _pattern(rng, body_color)), _part(handle, handle_color)]


def _build_chair(rng: np.random.Generator) -> list[_Part]:
    width, depth = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    seat_y, seat_t = rng.uniform(0.4, 0.55), rng.uniform(0.04, 0.08)
    back_h, leg_r = rng.uniform(0.35, 0.6), rng.uniform(0.02, 0.04)
    wood, cushion = _random_color(rng, value=(0.3, 0.7)), _random_color(rng)
    parts = [_part(_box((width, seat_t, depth), (0, seat_y + seat_t / 2, 0), 3), _pattern(rng, cushion))]
    round_legs = rng.uniform() < 0.5
    inset_x, inset_z = width / 2 - 1.5 * leg_r, depth / 2 - 1.5 * leg_r
    for sx in (-1, 1):
        for sz in (-1, 1):
            base = (sx * inset_x, 0, sz * inset_z)
            leg = (
                _cylinder(leg_r, seat_y, base, sections=12)
                if round_legs
                else _box((2 * leg_r, seat_y, 2 * leg_r), (base[0], seat_y / 2, base[2]))
            )
            parts.append(_part(leg, wood))
    # The backrest stands on the back edge (-Z) so that the open side of the chair faces +Z.
    back_t = rng.uniform(0.03, 0.06)
    back_centre = (0, seat_y + seat_t + back_h / 2, -depth / 2 + back_t / 2)
    parts.append(_part(_box((width, back_h, back_t), back_centre, 3), _pattern(rng, cushion)))
    return parts


def _build_table(rng: np.random.Generator) -> list[_Part]:
    height, top_t = rng.uniform(0.5, 0.8), rng.uniform(0.03, 0.07)
    top_color, leg_color = _random_color(rng), _random_color(rng, value=(0.3, 0.7))
    parts = []
    if rng.uniform() < 0.5:  # rectangular, four legs
        width, depth = rng.uniform(0.8, 1.3), rng.uniform(0.5, 0.9)
        parts.append(_part(_box((width, top_t, depth), (0, height - top_t / 2, 0), 3), _pattern(rng, top_color)))
        leg = rng.uniform(0.03, 0.06)
        for sx in (-1, 1):
            for sz in (-1, 1):
                centre = (sx * (width / 2 - 2 * leg), (height - top_t) / 2, sz * (depth / 2 - 2 * leg))
                parts.append(_part(_box((2 * leg, height - top_t, 2 * leg), centre), leg_color))
    else:  # round, central pedestal on a foot disc
        radius = rng.uniform(0.4, 0.6)
        parts.append(_part(_cylinder(radius, top_t, (0, height - top_t, 0), sections=40), _pattern(rng, top_color)))
        foot_r, foot_t = rng.uniform(0.2, 0.35), rng.uniform(0.02, 0.05)
        parts.append(_part(_cylinder(foot_r, foot_t, (0, 0, 0), sections=32), leg_color))
        parts.append(_part(_cylinder(rng.uniform(0.03, 0.07), height - top_t, (0, 0, 0), sections=16), leg_color))
    return parts


def _build_lamp(rng: np.random.Generator) -> list[_Part]:
    base_r, base_h = rng.uniform(0.15, 0.3), rng.uniform(0.04, 0.1)
    stem_h, stem_r = rng.uniform(0.5, 0.9), rng.uniform(0.015, 0.03)
    shade_h = rng.uniform(0.25, 0.4)
    shade_bottom, shade_top = rng.uniform(0.2, 0.35), rng.uniform(0.08, 0.18)
    metal, shade_color = _random_color(rng, saturation=(0.0, 0.3)), _random_color(rng)
    base = _lathe([(0, 0), (base_r, 0), (base_r * 0.9, base_h), (0, base_h)])
    stem = _cylinder(stem_r, stem_h, (0, base_h * 0.9, 0), sections=12)
    shade_y = base_h + stem_h - 0.5 * shade_h
    shade = _lathe([(0, shade_y), (shade_bottom, shade_y), (shade_top, shade_y + shade_h), (0, shade_y + shade_h)])
    return [_part(base, metal), _part(stem, metal), _part(shade, _pattern(rng, shade_color))]


def _build_vase(rng: np.random.Generator) -> list[_Part]:
    height = rng.uniform(0.7, 1.2)
    foot, belly, neck, lip = (rng.uniform(a, b) for a, b in ((0.1, 0.2), (0.2, 0.35), (0.05, 0.12), (0.08, 0.18)))
    belly_at, neck_at = rng.uniform(0.3, 0.6), 0.85
    t = np.linspace(0.0, 1.0, 17)
    # Smooth outer profile: foot -> belly -> neck (cosine easing), then flaring linearly to the lip.
    rising = foot + (belly - foot) * 0.5 * (1 - np.cos(np.pi * np.clip(t / belly_at, 0, 1)))
    falling = neck + (belly - neck) * 0.5 * (1 + np.cos(np.pi * np.clip((t - belly_at) / (neck_at - belly_at), 0, 1)))
    radii = np.where(t < belly_at, rising, falling)
    radii = np.where(t > neck_at, neck + (lip - neck) * (t - neck_at) / (1 - neck_at), radii)
    wall, cup_depth = 0.02, (1 - neck_at) * height
    # The opening is a shallow cup inside the lip (enough for a visible rim), closed below.
    profile = [(0.0, 0.0), *zip(radii, t * height, strict=True), (lip - wall, height),
               (neck - wall, height - cup_depth), (0.0, height - cup_depth)]  # fmt: skip
    return [_part(_lathe(profile, sections=32), _pattern(rng, _random_color(rng)))]


def _build_bottle(rng: np.random.Generator) -> list[_Part]:
    radius, body_h = rng.uniform(0.12, 0.22), rng.uniform(0.4, 0.7)
    shoulder_h, neck_r, neck_h = rng.uniform(0.08, 0.2), rng.uniform(0.04, 0.07), rng.uniform(0.1, 0.25)
    top = body_h + shoulder_h + neck_h
    glass = _random_color(rng)
    body = _lathe(
        [(0, 0), (radius * 0.95, 0), (radius, 0.02), (radius, body_h), (neck_r, body_h + shoulder_h), (neck_r, top),
         (0, top)],
        sections=28,
    )  # fmt: skip
    # A label band around the middle of the body.
    label_color, label_lo, label_hi = _contrast_color(glass, rng), 0.3 * body_h, 0.7 * body_h

    def paint(verts: np.ndarray) -> np.ndarray:
        on_label = (verts[:, 1] > label_lo) & (verts[:, 1] < label_hi)
        return np.where(on_label[:, None], label_color, glass)

    cap = _cylinder(neck_r * 1.15, rng.uniform(0.04, 0.08), (0, top - 0.02, 0), sections=16)
    return [_part(body, paint), _part(cap, _random_color(rng))]


def _build_snowman(rng: np.random.Generator) -> list[_Part]:
    radii = sorted(rng.uniform(0.15, 0.35, size=3), reverse=True)
    snow = np.array([0.95, 0.95, 0.97]) - rng.uniform(0, 0.1)
    base_r = radii[0] * 0.7
    parts = [_part(_cylinder(base_r, 0.03, (0, 0, 0), sections=24), snow * 0.9)]
    y = 0.03 + radii[0] * 0.85
    centres = []
    for i, r in enumerate(radii):
        centres.append(y)
        parts.append(_part(_sphere(r, (0, y, 0), subdivisions=3 if i == 0 else 2), snow))
        if i + 1 < len(radii):
            y += 0.8 * (r + radii[i + 1])
    head_r, head_y = radii[-1], centres[-1]
    # Face on the +Z side: carrot nose and two eyes.
    parts.append(_part(_cone(head_r * 0.15, head_r * 0.7, (0, head_y, head_r * 0.9), (0, 0, 1), 12), (1.0, 0.5, 0.1)))
    for sx in (-1, 1):
        eye = (sx * head_r * 0.35, head_y + head_r * 0.3, head_r * 0.88)
        parts.append(_part(_sphere(head_r * 0.1, eye, subdivisions=1), (0.05, 0.05, 0.05)))
    hat_color = _random_color(rng, value=(0.1, 0.5))
    parts.append(_part(_cylinder(head_r * 0.9, 0.02, (0, head_y + head_r * 0.85, 0)), hat_color))
    parts.append(_part(_cylinder(head_r * 0.6, head_r * 0.8, (0, head_y + head_r * 0.85, 0)), hat_color))
    scarf_y = centres[-1] - 0.7 * head_r
    parts.append(_part(_torus(head_r * 0.85, head_r * 0.15, (0, scarf_y, 0)), _pattern(rng, _random_color(rng))))
    return parts


def _build_car(rng: np.random.Generator) -> list[_Part]:
    length, width = rng.uniform(0.9, 1.3), rng.uniform(0.45, 0.6)
    wheel_r, body_h = rng.uniform(0.09, 0.14), rng.uniform(0.15, 0.25)
    paint_color = _random_color(rng)
    body_y = wheel_r * 0.8
    parts = [_part(_box((width, body_h, length), (0, body_y + body_h / 2, 0), 3), _pattern(rng, paint_color))]
    cabin_l, cabin_h = length * rng.uniform(0.4, 0.6), rng.uniform(0.12, 0.2)
    cabin_z = -length * rng.uniform(0.0, 0.15)  # cabin set back: the bonnet is at the front (+Z)
    cabin_centre = (0, body_y + body_h + cabin_h / 2, cabin_z)
    parts.append(_part(_box((width * 0.85, cabin_h, cabin_l), cabin_centre), (0.6, 0.75, 0.85)))
    for sx in (-1, 1):
        for sz in (-1, 1):
            hub = (sx * (width / 2 + 0.01), wheel_r, sz * length * 0.32)
            parts.append(_part(_cylinder(wheel_r, 0.08, hub, axis=(-sx, 0, 0), sections=20), (0.08, 0.08, 0.08)))
        light = (sx * width * 0.3, body_y + body_h * 0.6, length / 2 + 0.005)
        parts.append(_part(_box((0.08, 0.04, 0.02), light), (1.0, 0.95, 0.6)))
    return parts


def _build_rocket(rng: np.random.Generator) -> list[_Part]:
    radius, body_h = rng.uniform(0.08, 0.14), rng.uniform(0.5, 0.8)
    nose_h, fin_h, fin_w = rng.uniform(0.15, 0.3), rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.15)
    nozzle_h = radius * 0.6
    lift = nozzle_h + 0.01  # the body and nozzle float above the ground; the fins carry them
    hull, accent = _random_color(rng, saturation=(0.0, 0.25), value=(0.75, 0.95)), _random_color(rng)
    body = _lathe([(0, lift), (radius, lift), (radius, lift + body_h), (0, lift + body_h)], sections=24)
    parts = [
        _part(body, _pattern(rng, hull)),
        _part(_cone(radius, nose_h, (0, lift + body_h, 0), sections=24), accent),
        _part(_cone(radius * 0.7, nozzle_h, (0, lift, 0), axis=(0, -1, 0), sections=16), (0.3, 0.3, 0.3)),
    ]
    n_fins = int(rng.integers(3, 5))
    triangle = np.array([[radius * 0.8, 0.0], [radius + fin_w, 0.0], [radius * 0.8, lift + fin_h]])
    for k in range(n_fins):
        spin = trimesh.transformations.rotation_matrix(2 * math.pi * k / n_fins + math.pi / 2, [0, 1, 0])
        parts.append(_part(_prism(triangle, 0.02, spin), accent))
    return parts


def _build_donut(rng: np.random.Generator) -> list[_Part]:
    major, minor = rng.uniform(0.3, 0.4), rng.uniform(0.1, 0.18)
    dough, icing = np.array([0.8, 0.6, 0.35]) * rng.uniform(0.85, 1.1), _random_color(rng)
    icing_edge = minor * rng.uniform(0.9, 1.2)  # height above the ground where the icing starts
    sprinkle_colors = np.stack([_random_color(rng, value=(0.8, 1.0)) for _ in range(4)])
    sprinkle_rng = np.random.default_rng(rng.integers(2**31))

    def paint(verts: np.ndarray) -> np.ndarray:
        # Icing on the upper part of the ring, dotted with sprinkles; plain dough underneath.
        sprinkle = sprinkle_rng.uniform(size=len(verts)) < 0.08
        pick = sprinkle_colors[sprinkle_rng.integers(len(sprinkle_colors), size=len(verts))]
        top = np.where(sprinkle[:, None], pick, icing)
        return np.where((verts[:, 1] > icing_edge)[:, None], top, dough)

    ring = _torus(major, minor, (0, minor, 0), (0, 1, 0), sections=(40, 16))
    return [_part(ring, paint)]


def _build_house(rng: np.random.Generator) -> list[_Part]:
    width, depth, wall_h = rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.8), rng.uniform(0.4, 0.6)
    roof_h, overhang = rng.uniform(0.2, 0.4), rng.uniform(0.0, 0.06)
    wall_color, roof_color = _random_color(rng, saturation=(0.1, 0.5)), _random_color(rng, value=(0.3, 0.7))
    parts = [_part(_box((width, wall_h, depth), (0, wall_h / 2, 0), 3), _pattern(rng, wall_color))]
    # Roof: a triangle in the XY plane extruded along Z (ridge along the depth).
    half = width / 2 + overhang
    triangle = np.array([[-half, 0.0], [half, 0.0], [0.0, roof_h]])
    roof = _prism(triangle, depth + 2 * overhang, trimesh.transformations.translation_matrix([0, wall_h, 0]))
    parts.append(_part(roof, roof_color))
    door_w, door_h = width * 0.18, wall_h * 0.55
    door_x = rng.uniform(-0.25, 0.25) * width
    parts.append(_part(_box((door_w, door_h, 0.02), (door_x, door_h / 2, depth / 2 + 0.005)), (0.35, 0.2, 0.1)))
    window_y = wall_h * 0.6
    for wx in (-0.33, 0.33):
        if abs(wx * width - door_x) > door_w:
            parts.append(_part(_box((0.1, 0.1, 0.02), (wx * width, window_y, depth / 2 + 0.005)), (0.6, 0.8, 1.0)))
    if rng.uniform() < 0.6:
        chimney_x = rng.uniform(0.15, 0.3) * width * rng.choice([-1, 1])
        chimney_h = roof_h * 0.9
        parts.append(_part(_box((0.08, chimney_h, 0.08), (chimney_x, wall_h + chimney_h / 2 + 0.05, 0)), roof_color))
    return parts


def _lump(
    rng: np.random.Generator,
    radii: tuple | np.ndarray,
    centre: tuple | np.ndarray,
    bumps: int = 6,
    rotation: np.ndarray | None = None,
    detail: int = 3,
) -> trimesh.Trimesh:
    """An organic ellipsoid: an icosphere (``detail`` subdivisions) with ``bumps`` random Gaussian radial bumps and
    dents, scaled by ``radii`` (x, y, z), optionally rotated (3x3), then moved to ``centre``. Star-shaped, so still
    closed and outward-oriented."""
    tm = trimesh.creation.icosphere(subdivisions=detail)
    verts = np.asarray(tm.vertices, dtype=np.float64)
    directions = rng.normal(size=(bumps, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    heights, widths = rng.uniform(-0.2, 0.35, bumps), rng.uniform(0.1, 0.6, bumps)
    squared = ((verts[:, None] - directions[None]) ** 2).sum(-1)
    verts = verts * (1.0 + (heights * np.exp(-squared / widths)).sum(1))[:, None] * np.asarray(radii)
    if rotation is not None:
        verts = verts @ rotation.T
    return trimesh.Trimesh(verts + np.asarray(centre), tm.faces, process=False)


def _tube(path: np.ndarray, radii: np.ndarray, sections: int = 12) -> trimesh.Trimesh:
    """A closed tube of circular cross-sections swept along ``path`` (N, 3) with per-point ``radii`` (N,); each end is
    closed by a cone to an apex half a radius beyond it. Frames are parallel-transported (no twist)."""
    tangents = np.gradient(path, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    normal = np.cross(tangents[0], [0.0, 1.0, 0.0] if abs(tangents[0][1]) < 0.9 else [1.0, 0.0, 0.0])
    rings = []
    angles = np.linspace(0.0, 2.0 * math.pi, sections, endpoint=False)
    for point, tangent, radius in zip(path, tangents, radii, strict=True):
        normal = normal - tangent * (normal @ tangent)  # transport the previous normal to this cross-section
        normal /= np.linalg.norm(normal)
        binormal = np.cross(tangent, normal)
        rings.append(point + radius * (np.cos(angles)[:, None] * normal + np.sin(angles)[:, None] * binormal))
    n = len(path)
    apexes = [path[0] - 0.5 * radii[0] * tangents[0], path[-1] + 0.5 * radii[-1] * tangents[-1]]
    verts = np.concatenate([np.concatenate(rings), apexes])
    ring, step = np.arange(n - 1)[:, None] * sections, np.arange(sections)[None]
    a, b = ring + step, ring + (step + 1) % sections
    c, d = b + sections, a + sections
    side = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)], 1).reshape(-1, 3)
    first, last = np.arange(sections), (n - 1) * sections + np.arange(sections)
    start = np.stack([np.full(sections, n * sections), np.roll(first, -1), first], -1)
    end = np.stack([np.full(sections, n * sections + 1), last, np.roll(last, -1)], -1)
    return trimesh.Trimesh(verts, np.concatenate([side, start, end]), process=False)


def _flatten_below(parts: list[_Part], floor: float) -> list[_Part]:
    """Press every vertex below ``y = floor`` onto that plane (a flat base to stand on); parts stay closed."""
    for part in parts:
        part.verts[:, 1] = np.maximum(part.verts[:, 1], floor)
    return parts


def _organic_paint(rng: np.random.Generator) -> np.ndarray | Callable[[np.ndarray], np.ndarray]:
    """Plain grey or white (like untextured scans and sculpts) in 40 % of cases, else a colour or a pattern."""
    if rng.uniform() < 0.4:
        return np.full(3, rng.uniform(0.45, 0.9))
    color = _random_color(rng)
    return color if rng.uniform() < 0.5 else _pattern(rng, color)


def _build_blob(rng: np.random.Generator) -> list[_Part]:
    """One to three overlapping bumpy ellipsoids (pebbles, potatoes, clay lumps), each axis scaled independently, with a
    flat underside."""
    paint = _organic_paint(rng)
    radii = rng.uniform(0.5, 1.0, 3)
    parts = [_part(_lump(rng, radii, (0, 0, 0)), paint)]
    for _ in range(int(rng.integers(0, 3))):  # extra lumps overlap the first one (a connected object)
        direction = rng.normal(size=3)
        centre = direction / np.linalg.norm(direction) * radii * rng.uniform(0.5, 0.9)
        parts.append(_part(_lump(rng, rng.uniform(0.3, 0.7, 3), centre), paint))
    return _flatten_below(parts, -rng.uniform(0.5, 0.8) * radii[1])  # rests on the ground like a pebble


def _build_critter(rng: np.random.Generator) -> list[_Part]:
    """An animal-like figure of lumps: body (standing or sitting up), head towards +Z, legs, optional ears and tail."""
    paint = _organic_paint(rng)
    length, height, width = rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.35), rng.uniform(0.18, 0.32)
    pitch = rng.uniform(0.0, 1.1) if rng.uniform() < 0.5 else 0.0  # sitting up: body tilted head-up about X
    tilt = trimesh.transformations.rotation_matrix(-pitch, [1.0, 0.0, 0.0])[:3, :3]
    leg_len = rng.uniform(0.1, 0.35) * (0.5 if pitch else 1.0)
    body_centre = np.array([0.0, leg_len + height * 0.8, 0.0])
    parts = [_part(_lump(rng, (width, height, length), body_centre, rotation=tilt), paint)]
    front = body_centre + tilt @ np.array([0.0, 0.5 * height, 0.9 * length])
    head_r = rng.uniform(0.5, 0.9) * max(height, width)
    head = front + np.array([0.0, rng.uniform(0.3, 1.0) * head_r, 0.4 * head_r])
    parts.append(_part(_lump(rng, head_r * rng.uniform(0.8, 1.2, 3), head), paint))
    feet: list[_Part] = []
    for side in (-1, 1):
        if rng.uniform() < 0.6:
            ear_len = head_r * rng.uniform(0.5, 2.0)
            ear = head + np.array([side * 0.5 * head_r, 0.8 * head_r + 0.4 * ear_len, -0.1 * head_r])
            parts.append(_part(_lump(rng, (0.25 * head_r, 0.5 * ear_len, 0.15 * head_r), ear, 3, detail=2), paint))
        for end in (-1, 1):
            foot = body_centre + tilt @ np.array([side * 0.6 * width, -0.5 * height, end * 0.6 * length])
            foot[1] = 0.5 * leg_len + 0.05
            radii = (0.3 * width, 0.5 * leg_len + 0.08, 0.35 * width)
            feet.append(_part(_lump(rng, radii, foot, 3, detail=2), paint))
    if rng.uniform() < 0.6:
        tail = body_centre + tilt @ np.array([0.0, 0.2 * height, -1.05 * length])
        parts.append(_part(_lump(rng, rng.uniform(0.06, 0.15, 3), tail, 3, detail=2), paint))
    return _flatten_below(parts + feet, max(float(foot.verts[:, 1].min()) for foot in feet))  # flat soles and rump


def _build_serpent(rng: np.random.Generator) -> list[_Part]:
    """A long tapering body (snakes, dragons, worms, tentacles) lying in S-bends from the tail at -Z to the head at +Z,
    or in a flat coil; the head sometimes raised on a neck; optional legs and dorsal spikes."""
    paint = _organic_paint(rng)
    t = np.linspace(0.0, 1.0, 48)
    thickness = rng.uniform(0.05, 0.12)
    if rng.uniform() < 0.3:  # a flat coil winding inwards, the head in the middle
        turn = rng.uniform(1.2, 2.2) * 2.0 * math.pi * t
        coil = rng.uniform(0.25, 0.45) * (1.0 - 0.6 * t)
        x, z = coil * np.sin(turn), -coil * np.cos(turn)
    else:  # S-bends along Z
        x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * math.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3))
                for _ in range(2))  # fmt: skip
        z = rng.uniform(0.6, 1.0) * (t - 0.5)
    radii = (
        thickness * (0.15 + 0.85 * np.clip(t / 0.4, 0.0, 1.0) ** 0.7) * (1.0 - 0.25 * np.clip((t - 0.8) / 0.2, 0, 1))
    )
    rise = rng.uniform(0.1, 0.4) if rng.uniform() < 0.6 else 0.0  # neck lifting the head off the ground
    y = radii + rise * np.clip((t - 0.65) / 0.35, 0.0, 1.0) ** 2
    path = np.stack([x, y, z], -1)
    parts = [_part(_tube(path, radii), paint)]
    direction = path[-1] - path[-3]
    head_r = thickness * rng.uniform(1.0, 1.6)
    head_rotation = trimesh.geometry.align_vectors([0.0, 0.0, 1.0], direction)[:3, :3]
    head_radii = head_r * np.array([rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9), rng.uniform(1.2, 1.8)])
    parts.append(_part(_lump(rng, head_radii, path[-1] + 0.6 * head_r * direction / np.linalg.norm(direction), 4,
                             head_rotation, detail=2), paint))  # fmt: skip
    for index in rng.choice([16, 26, 36], size=int(rng.choice([0, 1, 2])), replace=False):  # pairs of legs
        for side in (-1, 1):
            hip = path[index] + np.array([side * 0.5 * radii[index], 0.0, 0.0])
            foot = hip + np.array([side * rng.uniform(0.5, 1.5) * thickness, -hip[1], 0.0])
            leg = np.linspace(hip, foot, 8)
            parts.append(_part(_tube(leg, np.linspace(0.5, 0.35, 8) * radii[index], 8), paint))
    if rng.uniform() < 0.4:  # dorsal spikes
        spike_color = _contrast_color(paint if isinstance(paint, np.ndarray) else _random_color(rng), rng)
        for index in range(12, 44, 4):
            base = path[index] + np.array([0.0, 0.7 * radii[index], 0.0])
            parts.append(_part(_cone(0.4 * radii[index], rng.uniform(0.6, 1.2) * radii[index], tuple(base), sections=8),
                               spike_color))  # fmt: skip
    return _flatten_below(parts, 0.3 * float(radii.min()))


def _build_bust(rng: np.random.Generator) -> list[_Part]:
    """A sculpted bust: head (nose to +Z, optional ears of any size and hair) on a neck, usually on shallow shoulders,
    often on a pedestal."""
    paint = _organic_paint(rng)
    base_y = 0.0
    parts = []
    pedestal = rng.uniform() < 0.6
    if pedestal:
        width, height = rng.uniform(0.15, 0.3), rng.uniform(0.08, 0.25)
        color = paint if rng.uniform() < 0.5 else _random_color(rng, saturation=(0.0, 0.3))
        if rng.uniform() < 0.5:
            parts.append(_part(_lathe([(0, 0), (width, 0), (width, 0.2 * height), (0.7 * width, 0.5 * height),
                                       (0.8 * width, height), (0, height)]), color))  # fmt: skip
        else:
            parts.append(_part(_box((2 * width, height, 1.6 * width), (0, height / 2, 0)), color))
        base_y = height
    if rng.uniform() < 0.75 or not pedestal:  # wide and shallow: a bust is much thinner front to back than across
        chest = np.array([rng.uniform(0.3, 0.45), rng.uniform(0.15, 0.25), rng.uniform(0.12, 0.2)])
        parts.append(_part(_lump(rng, chest, (0, base_y + 0.6 * chest[1], 0), 5), paint))
        neck_y = base_y + 1.4 * chest[1]
    else:
        neck_y = base_y + 0.05
    head_r = rng.uniform(0.15, 0.22)
    neck_len = rng.uniform(0.05, 0.12)
    neck = np.linspace([0.0, neck_y - 0.05, 0.0], [0.0, neck_y + neck_len + 0.5 * head_r, 0.02], 6)
    parts.append(_part(_tube(neck, np.full(6, rng.uniform(0.35, 0.5) * head_r), 12), paint))
    head = np.array([0.0, neck_y + neck_len + head_r, 0.03])
    head_radii = head_r * np.array([rng.uniform(0.8, 0.95), rng.uniform(1.0, 1.2), rng.uniform(0.95, 1.1)])
    parts.append(_part(_lump(rng, head_radii, head, 4), paint))
    nose = head + np.array([0.0, -0.1 * head_r, 0.95 * head_radii[2]])
    parts.append(_part(_lump(rng, head_r * np.array([0.12, 0.2, 0.2]), nose, 2, detail=2), paint))
    if rng.uniform() < 0.6:
        ear = head_r * rng.uniform(0.2, 0.7)  # from human ears to a monkey's or a mouse's
        for side in (-1, 1):
            centre = head + np.array([side * (head_radii[0] + 0.5 * ear), 0.0, -0.1 * head_r])
            parts.append(_part(_lump(rng, (0.6 * ear, ear, 0.25 * ear), centre, 2, detail=2), paint))
    if rng.uniform() < 0.5:  # hair or a cap over the top and back of the head
        hair = head + np.array([0.0, 0.25 * head_r, -0.2 * head_r])
        color = paint if rng.uniform() < 0.5 else _random_color(rng)
        parts.append(_part(_lump(rng, head_radii * rng.uniform(0.95, 1.1), hair, 6), color))
    return _flatten_below(parts, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# Assembly, normalisation, public API
# --------------------------------------------------------------------------------------------------------------------
def normalize_vertices(verts: np.ndarray, radius: float = DEFAULT_RADIUS) -> np.ndarray:
    """Centre the bounding box at the origin and scale so the farthest vertex lies at ``radius``.

    Args:
        verts: (V, 3) vertex positions (any units, orientation kept).
        radius: radius of the origin-centred sphere the result fits in.

    Returns:
        (V, 3) float64 normalised positions.
    """
    verts = np.asarray(verts, dtype=np.float64)
    if verts.ndim != 2 or verts.shape[1] != 3 or len(verts) == 0:
        raise ValueError(f"verts must have shape (V, 3) with V >= 1, got {verts.shape}")
    if not np.isfinite(verts).all():
        raise ValueError("verts contains NaN or infinite values")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    centred = verts - 0.5 * (verts.min(axis=0) + verts.max(axis=0))
    extent = np.linalg.norm(centred, axis=1).max()
    if extent < 1e-12:
        raise ValueError("mesh has zero extent (all vertices coincide)")
    return centred * (radius / extent)


def _assemble(parts: list[_Part], radius: float) -> Mesh:
    """Concatenate parts (no vertex merging, so each part stays closed) and normalise."""
    offsets = np.cumsum([0] + [len(p.verts) for p in parts[:-1]])
    verts = normalize_vertices(np.concatenate([p.verts for p in parts]), radius)
    faces = np.concatenate([p.faces + off for p, off in zip(parts, offsets, strict=True)])
    colors = np.clip(np.concatenate([p.colors for p in parts]), 0.0, 1.0)
    return Mesh(
        verts=torch.from_numpy(verts).float(),
        faces=torch.from_numpy(faces).long(),
        vertex_colors=torch.from_numpy(colors).float(),
    )


ORGANIC_CLASSES: tuple[str, ...] = ("blob", "critter", "serpent", "bust")
"""Classes of organic, sculpt-like objects (the others are man-made)."""

_BUILDERS: dict[str, Callable[[np.random.Generator], list[_Part]]] = {
    "mug": _build_mug,
    "chair": _build_chair,
    "table": _build_table,
    "lamp": _build_lamp,
    "vase": _build_vase,
    "bottle": _build_bottle,
    "snowman": _build_snowman,
    "car": _build_car,
    "rocket": _build_rocket,
    "donut": _build_donut,
    "house": _build_house,
    "blob": _build_blob,
    "critter": _build_critter,
    "serpent": _build_serpent,
    "bust": _build_bust,
}


def _class_generator(builder: Callable[[np.random.Generator], list[_Part]]) -> Callable[[np.random.Generator], Mesh]:
    def generate(rng: np.random.Generator) -> Mesh:
        return _assemble(builder(rng), DEFAULT_RADIUS)

    generate.__doc__ = f"Random {builder.__name__.removeprefix('_build_')} (normalised Mesh with vertex colours)."
    return generate


CLASSIC_CLASSES: tuple[str, ...] = tuple(name for name in _BUILDERS if name not in ORGANIC_CLASSES)
"""The 11 man-made classes, the only ones before the organic classes were added: pass ``classes=CLASSIC_CLASSES`` to
:func:`monorecon.data.synthesize_dataset` to regenerate a dataset made before that (and
``list(CLASSIC_CLASSES) + ["blob", "critter"]`` for one made when there were 13 classes)."""

SHAPE_CLASSES: dict[str, Callable[[np.random.Generator], Mesh]] = {
    name: _class_generator(builder) for name, builder in _BUILDERS.items()
}
"""Class name -> generator ``rng -> Mesh`` (normalised to radius 0.5, +Y up, front +Z, vertex colours)."""


def make_object(class_name: str, seed: int, radius: float = DEFAULT_RADIUS) -> Mesh:
    """A random object of a named class, deterministic by ``seed``.

    Args:
        class_name: one of ``SHAPE_CLASSES``.
        seed: integer seed of ``numpy.random.default_rng``.
        radius: the object is scaled so its farthest vertex from the bounding-box centre (the origin) is at ``radius``.

    Returns:
        :class:`Mesh` with verts (V, 3) float32, faces (F, 3) long and vertex_colors (V, 3) in [0, 1]; +Y up,
        resting on its base, front facing +Z. At most a few thousand faces.
    """
    if class_name not in _BUILDERS:
        raise ValueError(f"unknown shape class {class_name!r}; known: {sorted(_BUILDERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return _assemble(_BUILDERS[class_name](np.random.default_rng(int(seed))), radius)


def load_normalized_mesh(
    path: str | Path, radius: float = DEFAULT_RADIUS, default_color: tuple[float, float, float] = (0.7, 0.7, 0.7)
) -> Mesh:
    """Load a real mesh (OBJ / PLY / GLB) and normalise it like the procedural objects.

    The file's own orientation is kept (no rotation is guessed: a Z-up file stays Z-up); only the bounding-box centre
    is moved to the origin and the scale set so the farthest vertex lies at ``radius``. Meshes without colours get
    ``default_color`` on every vertex; textured meshes keep their UVs and texture.

    Raises:
        ValueError: missing, unreadable or empty file (from :func:`monorecon.io.mesh_io.load_mesh`).
    """
    mesh = load_mesh(path)
    verts = normalize_vertices(mesh.verts.detach().cpu().numpy(), radius)
    colors = mesh.vertex_colors
    if colors is None and mesh.texture is None:
        colors = torch.tensor(default_color, dtype=torch.float32).expand(len(verts), 3).clone()
    return Mesh(
        verts=torch.from_numpy(verts).to(mesh.verts.dtype),
        faces=mesh.faces,
        vertex_colors=colors,
        uvs=mesh.uvs,
        texture=mesh.texture,
    )
