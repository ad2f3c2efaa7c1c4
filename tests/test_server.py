"""REST API (monorecon.server): endpoints, file formats, error answers, size limit, serialisation, real tiny model.

Most tests inject a stub model whose mesh and colours are known, so what comes back can be checked against them with
independent readers (trimesh, zipfile, PIL); one test runs the reduced random-weights TripoSR of tests/data.
"""

import io
import json
import threading
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from fastapi.testclient import TestClient
from PIL import Image

from analytic import linear_to_srgb
from monorecon.api import ReconstructOptions, reconstruct_full
from monorecon.core.carving import SilhouetteFill, SilhouetteHull
from monorecon.core.mesh import Mesh
from monorecon.io import load_mesh
from monorecon.server import MeshForm, ReconstructionService, ServerSettings, create_app, mesh_file, run_server

TINY_WEIGHTS = Path(__file__).parent / "data" / "triposr_ref" / "model.safetensors"
STUB_COLOR = (0.2, 0.6, 0.8)


class StubModel:
    """The model interface used by the API (encode / query / extract_mesh / render) with known outputs.

    ``extract_mesh`` returns an icosphere of radius 0.5 with vertex colours; ``query`` gives a constant colour, so a
    baked texture must be that colour. Calls are recorded; ``encode_delay`` and ``fail`` simulate slow or broken
    models.
    """

    def __init__(self, encode_delay: float = 0.0, fail: Exception | None = None) -> None:
        sphere = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
        self.mesh = Mesh(
            verts=torch.tensor(sphere.vertices, dtype=torch.float32),
            faces=torch.tensor(sphere.faces, dtype=torch.long),
            vertex_colors=torch.tensor(STUB_COLOR).expand(len(sphere.vertices), 3).clone(),
        )
        self.encode_delay = encode_delay
        self.fail = fail
        self.images: list[torch.Tensor] = []
        self.extract_calls: list[dict] = []
        self.active = 0
        self.max_active = 0
        self._count_lock = threading.Lock()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with self._count_lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.fail is not None:
                raise self.fail
            time.sleep(self.encode_delay)
            self.images.append(images.clone())
            return torch.zeros(images.shape[0], 3, 4, 8, 8)
        finally:
            with self._count_lock:
                self.active -= 1

    def query(self, scene_code: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density = torch.zeros(*points.shape[:-1], 1)
        return density, torch.tensor(STUB_COLOR).expand(*points.shape[:-1], 3)

    def extract_mesh(
        self, scene_code: torch.Tensor, resolution: int, threshold: float, method: str, carve=None
    ) -> Mesh:
        self.extract_calls.append(
            {"resolution": resolution, "threshold": threshold, "method": method, "carved": carve is not None}
        )
        return self.mesh

    def render(self, scene_code: torch.Tensor, cameras) -> dict:
        raise NotImplementedError("the server does not volume-render")


class ConfiguredStub(StubModel):
    """The stub with a model config whose settings all differ from those of a model without one (TripoSR's
    mesh_threshold 25, foreground_ratio 0.85, no silhouette fill); ``weights`` records each extraction's carving."""

    def __init__(self) -> None:
        super().__init__()
        renderer = SimpleNamespace(mesh_threshold=3.5, silhouette_fill=True, radius=0.87)
        self.config = SimpleNamespace(foreground_ratio=0.6, renderer=renderer)
        self.weights: list = []

    def extract_mesh(
        self, scene_code: torch.Tensor, resolution: int, threshold: float, method: str, carve=None
    ) -> Mesh:
        self.weights.append(carve)
        return super().extract_mesh(scene_code, resolution, threshold, method, carve)


def object_share(image: torch.Tensor) -> float:
    """The larger side of the red object's bounding box in a (1, S, S, 3) model input, as a share of S."""
    red = (image[0, ..., 0] > 0.9) & (image[0, ..., 1] < 0.1)
    rows, cols = torch.nonzero(red, as_tuple=True)
    return (max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1) / image.shape[1]


def png_upload(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def object_png(side: int = 64, color=(255, 0, 0)) -> bytes:
    """RGBA PNG: an opaque square of ``color`` in the middle of a transparent image."""
    rgba = np.zeros((side, side, 4), dtype=np.uint8)
    rgba[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (*color, 255)
    return png_upload(rgba)


SMALL_SETTINGS = ServerSettings(
    max_upload_bytes=256 * 1024, max_image_side=512, max_mc_resolution=64, preview_frames=2, preview_size=48
)


@pytest.fixture
def stub() -> StubModel:
    return StubModel()


@pytest.fixture
def client(stub) -> TestClient:
    return TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))


def post(client: TestClient, data: dict | None = None, image: bytes | None = None, name: str = "chair.png"):
    files = {"image": (name, object_png() if image is None else image, "image/png")}
    return client.post("/reconstruct", files=files, data=data or {})


def assert_one_line_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    return detail


# --------------------------------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------------------------------
def test_health_reports_model_and_limits(client):
    body = client.get("/health").json()
    assert body["status"] == "ok"
    assert body["model"]["class"] == "StubModel" and body["model"]["source"] == "injected"
    assert body["limits"]["max_mc_resolution"] == 64
    assert body["limits"]["max_upload_bytes"] == 256 * 1024


def test_glb_download_holds_the_model_mesh(client, stub):
    settings = {"mc_resolution": "40", "threshold": "12.5", "seed": "3", "project_input": "false"}
    response = post(client, settings, name="my chair.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.headers["content-disposition"] == 'attachment; filename="my_chair.glb"'
    assert response.content[:4] == b"glTF"
    assert stub.extract_calls == [{"resolution": 40, "threshold": 12.5, "method": "coarse_to_fine", "carved": True}]
    assert int(response.headers["x-mesh-faces"]) == stub.mesh.num_faces
    timing = [entry.split(";dur=") for entry in response.headers["server-timing"].split(", ")]
    assert [name for name, _ in timing][:2] == ["preprocess", "encode"] and timing[-1][0] == "write"
    assert all(float(milliseconds) >= 0 for _, milliseconds in timing)
    assert post(client, {"carve": "false"}).status_code == 200
    assert stub.extract_calls[-1]["carved"] is False
    assert post(client, {"fill": "false"}).status_code == 200 and stub.extract_calls[-1]["carved"] is True

    loaded = trimesh.load(io.BytesIO(response.content), file_type="glb", force="mesh", process=False)
    expected = np.sort(stub.mesh.verts.numpy(), axis=0)
    np.testing.assert_allclose(np.sort(np.asarray(loaded.vertices), axis=0), expected, atol=1e-6)
    colors = glb_vertex_colors(response.content)
    np.testing.assert_allclose(colors[:, :3], np.broadcast_to(np.array(STUB_COLOR) * 255, (len(colors), 3)), atol=1)

    # by default the surface the (red) input sees takes its colour: the vertex nearest the input camera is red
    projected = post(client, {"mc_resolution": "40", "threshold": "12.5", "seed": "3"})
    assert projected.status_code == 200, projected.text
    loaded = trimesh.load(io.BytesIO(projected.content), file_type="glb", force="mesh", process=False)
    front = int(np.argmax(np.asarray(loaded.vertices)[:, 2]))  # +Z faces the input camera (glTF frame = ours)
    np.testing.assert_allclose(glb_vertex_colors(projected.content)[front, :3], [255, 0, 0], atol=2)
    # and so does a baked texture there (the texels come from query's colour, blended the same way)
    baked = post(client, {"mc_resolution": "40", "bake_texture": "true", "texture_resolution": "64"})
    assert baked.status_code == 200, baked.text
    loaded = trimesh.load(io.BytesIO(baked.content), file_type="glb", force="mesh")
    front = int(np.argmax(np.asarray(loaded.vertices)[:, 2]))
    u, v = loaded.visual.uv[front]
    texture = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_allclose(texture[min(int((1 - v) * 64), 63), min(int(u * 64), 63)], [255, 0, 0], atol=3)


def test_object_height_and_origin_place_the_mesh(client, stub):
    response = post(client, {"mc_resolution": "16", "object_height": "2.5", "origin": "bottom"})
    assert response.status_code == 200, response.text
    placed = np.asarray(trimesh.load(io.BytesIO(response.content), file_type="glb", force="mesh").vertices)
    original = stub.mesh.verts.numpy()
    low, high = placed.min(axis=0), placed.max(axis=0)
    np.testing.assert_allclose([low[1], high[1]], [0.0, 2.5], atol=1e-5)  # stands on y = 0, 2.5 tall
    np.testing.assert_allclose((low + high)[[0, 2]], [0.0, 0.0], atol=1e-5)  # centred in x and z
    scale = 2.5 / np.ptp(original[:, 1])
    np.testing.assert_allclose(np.ptp(placed, axis=0), scale * np.ptp(original, axis=0), rtol=1e-5)
    centred = post(client, {"mc_resolution": "16", "origin": "center"})
    placed = np.asarray(trimesh.load(io.BytesIO(centred.content), file_type="glb", force="mesh").vertices)
    np.testing.assert_allclose(placed.min(axis=0) + placed.max(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.ptp(placed, axis=0), np.ptp(original, axis=0), rtol=1e-6)  # scale kept


def test_glb_material_is_lit_unless_unlit_is_asked(client):
    for data, extensions in (({}, None), ({"unlit": "true"}, {"KHR_materials_unlit": {}})):
        response = post(client, {"mc_resolution": "16", **data})
        assert response.status_code == 200, response.text
        (material,) = pygltflib.GLTF2.load_from_bytes(response.content).materials
        assert (material.extensions or None) == extensions


def glb_vertex_colors(glb: bytes) -> np.ndarray:
    """(V, 3) COLOR_0 of the first primitive as display values in [0, 255], read with pygltflib (trimesh drops it
    when a material is set)."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    accessor = gltf.accessors[gltf.meshes[0].primitives[0].attributes.COLOR_0]
    assert accessor.componentType == 5126 and accessor.type == "VEC3"  # linear floats
    view = gltf.bufferViews[accessor.bufferView]
    offset = view.byteOffset + (accessor.byteOffset or 0)
    linear = np.frombuffer(gltf.binary_blob(), np.float32, count=3 * accessor.count, offset=offset).reshape(-1, 3)
    return linear_to_srgb(linear) * 255.0


def test_model_sees_the_preprocessed_object(client, stub):
    """A red square on transparency: the model gets a square image, grey 0.5 around the object, red in the middle."""
    assert post(client).status_code == 200
    (image,) = stub.images
    assert image.shape[0] == 1 and image.shape[1] == image.shape[2] and image.shape[3] == 3
    side = image.shape[1]
    torch.testing.assert_close(image[0, 0, 0], torch.tensor([0.5, 0.5, 0.5]), atol=1 / 255, rtol=0)
    torch.testing.assert_close(image[0, side // 2, side // 2], torch.tensor([1.0, 0.0, 0.0]), atol=1 / 255, rtol=0)


def test_obj_with_baked_texture_comes_zipped(client, tmp_path):
    """The zip's OBJ names the MTL in the zip (mtllib), the MTL the PNG in the zip (map_Kd), usemtl the material the
    MTL defines: extracted, trimesh (an independent reader) finds the texture. Vertex colours: the OBJ alone."""
    response = post(client, {"format": "obj", "bake_texture": "true", "texture_resolution": "64"}, name="my mug.jpg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="my_mug.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["my_mug.mtl", "my_mug.obj", "my_mug.png"]
        texture = np.asarray(Image.open(io.BytesIO(archive.read("my_mug.png"))).convert("RGB"))
        archive.extractall(tmp_path)

    def values(name: str, key: str) -> list[str]:
        lines = (tmp_path / name).read_text().splitlines()
        return [line.split(maxsplit=1)[1] for line in lines if line.startswith(key + " ")]

    assert values("my_mug.obj", "mtllib") == ["my_mug.mtl"] and values("my_mug.mtl", "map_Kd") == ["my_mug.png"]
    assert values("my_mug.obj", "usemtl") == values("my_mug.mtl", "newmtl")
    assert texture.shape == (64, 64, 3)
    # The stub's field has one colour everywhere: the baked (and dilated) texels are all that colour.
    np.testing.assert_allclose(np.median(texture.reshape(-1, 3), axis=0), np.array(STUB_COLOR) * 255, atol=1)
    loaded = trimesh.load(tmp_path / "my_mug.obj", force="mesh", process=False)
    assert np.asarray(loaded.visual.material.image).shape[:2] == (64, 64)
    with zipfile.ZipFile(io.BytesIO(post(client, {"format": "obj"}, name="mug.jpg").content)) as archive:
        assert archive.namelist() == ["mug.obj"]


@pytest.mark.parametrize("placement", [{}, {"object_height": "0.3", "origin": "bottom"}])
def test_bundle_zips_what_the_reconstruct_command_writes(client, tmp_path, placement):
    """``bundle``: the mesh (with its companions), input.png and result.json in one zip. The stub's mesh is a sphere
    of radius 0.5 about the origin; result.json's input camera, applied by the documented pinhole formulas (numpy),
    must put its centre at the middle of input.png and its outline at the analytic radius f r / sqrt(D^2 - r^2),
    also after ``object_height`` / ``origin`` moved and scaled it (the camera moves with the mesh)."""
    data = {"format": "obj", "bake_texture": "true", "texture_resolution": "64", "bundle": "true", **placement}
    response = post(client, data, name="my mug.jpg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == 'attachment; filename="my_mug_result.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == ["input.png", "mesh.mtl", "mesh.obj", "mesh.png", "result.json"]
        archive.extractall(tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["input"] == "my mug.jpg"
    assert record["model"] == {"weights": "injected", "config": None, "device": None, "dtype": "float32"}
    assert record["mesh_file"] == "mesh.obj" and record["unlit"] is False
    assert record["options"]["bake_texture"] is True and record["options"]["texture_resolution"] == 64
    assert record["options"]["origin"] == placement.get("origin", "model")
    assert record["mesh"]["faces"] == int(response.headers["x-mesh-faces"]) and record["mesh"]["textured"] is True
    assert list(record["timings"])[:2] == ["preprocess", "encode"] and "bake" in record["timings"]
    loaded = trimesh.load(tmp_path / "mesh.obj", force="mesh", process=False)
    assert np.asarray(loaded.visual.material.image).shape[:2] == (64, 64)

    scale = float(placement.get("object_height", 1.0))
    centre = np.zeros(3) if not placement else np.array([0.0, 0.5 * scale, 0.0])  # standing on y = 0
    verts = np.asarray(loaded.vertices, dtype=np.float64)
    np.testing.assert_allclose((verts.min(0) + verts.max(0)) / 2, centre, atol=1e-5)
    camera = record["camera"]
    alpha = np.asarray(Image.open(tmp_path / "input.png"))[..., 3]
    assert (camera["width"], camera["height"]) == alpha.shape[::-1] == (512, 512)
    w2c = np.linalg.inv(np.asarray(camera["c2w"]))
    k = np.asarray(camera["K"])

    def project(points: np.ndarray) -> np.ndarray:
        local = points @ w2c[:3, :3].T + w2c[:3, 3]
        depth = -local[:, 2]
        return np.stack([k[0, 2] + k[0, 0] * local[:, 0] / depth, k[1, 2] - k[1, 1] * local[:, 1] / depth], -1)

    np.testing.assert_allclose(project(centre[None])[0], [256, 256], atol=1e-3)
    distance = np.linalg.norm(np.asarray(camera["c2w"])[:3, 3] - centre)
    assert distance == pytest.approx(1.9 * scale, rel=1e-5)
    rim = k[0, 0] * 0.5 * scale / np.sqrt(distance**2 - (0.5 * scale) ** 2)
    radii = np.linalg.norm(project(verts) - 256, axis=1)
    assert radii.max() <= rim * (1 + 1e-4) and radii.max() > 0.9 * rim


def test_bundle_for_a_format_that_cannot_hold_the_mesh_gets_422(client):
    response = post(client, {"format": "ply", "bake_texture": "true", "bundle": "true"})
    assert "PLY" in assert_one_line_error(response, 422)


def test_a_model_whose_meshes_have_no_colours_is_named_in_a_one_line_422():
    class Colourless(StubModel):
        def extract_mesh(self, *args, **kwargs) -> Mesh:
            return Mesh(self.mesh.verts, self.mesh.faces)

    client = TestClient(create_app(Colourless(), settings=SMALL_SETTINGS, ui=False))
    assert "Colourless.extract_mesh gave a mesh without vertex colours" in assert_one_line_error(post(client), 422)


def test_reconstruction_save_leaves_nothing_behind_when_a_file_fails(stub, tmp_path, monkeypatch):
    """``Reconstruction.save`` (the CLI's folder, the server's bundle): a mesh the format cannot hold is refused before
    anything is written; a failure after input.png and the mesh were written leaves the folder empty; both raise."""
    from monorecon.io import atomic

    image = np.asarray(Image.open(io.BytesIO(object_png())), dtype=np.float32) / 255
    result = reconstruct_full(image, stub, ReconstructOptions(bake_texture=True, texture_resolution=64))
    with pytest.raises(ValueError, match="PLY"):
        result.save(tmp_path / "ply", "ply")  # a textured mesh: refused before anything is written
    assert not (tmp_path / "ply").exists()
    with pytest.raises(ValueError, match="unlit"):
        result.save(tmp_path / "stl", "stl", unlit=True)
    assert not (tmp_path / "stl").exists()

    def failing_json(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "atomic_write_json", failing_json)
    with pytest.raises(OSError, match="disk full"):
        result.save(tmp_path / "obj", "obj")
    assert list((tmp_path / "obj").iterdir()) == []
    monkeypatch.undo()
    written = result.save(tmp_path / "obj", "obj", record={"input": "x.png"})
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "obj").iterdir())
    assert sorted(p.name for p in written) == ["input.png", "mesh.mtl", "mesh.obj", "mesh.png", "result.json"]
    assert list(json.loads((tmp_path / "obj" / "result.json").read_text()))[:3] == ["input", "mesh_file", "unlit"]


def test_usdz_download_always_carries_a_baked_texture(client, tmp_path):
    """AR viewers show no vertex colours: a USDZ request gets a texture without asking for one."""
    response = post(client, {"format": "usdz", "texture_resolution": "64"}, name="mug.jpg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/vnd.usdz+zip"
    assert response.headers["content-disposition"] == 'attachment; filename="mug.usdz"'
    (tmp_path / "mug.usdz").write_bytes(response.content)
    mesh = load_mesh(tmp_path / "mug.usdz")
    assert mesh.texture is not None and mesh.texture.shape == (64, 64, 3)
    np.testing.assert_allclose(mesh.texture.reshape(-1, 3).median(dim=0).values, STUB_COLOR, atol=1 / 255)


def test_stl_download_is_z_up(client, stub):
    response = post(client, {"format": "stl"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "model/stl"
    assert response.headers["content-disposition"] == 'attachment; filename="chair.stl"'
    solid = trimesh.load(io.BytesIO(response.content), file_type="stl")
    low, high = stub.mesh.bounds.numpy()
    np.testing.assert_allclose(solid.bounds, [[low[0], -high[2], low[1]], [high[0], -low[2], high[1]]], atol=1e-6)


def test_ply_download(client, stub):
    response = post(client, {"format": "ply"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == 'attachment; filename="chair.ply"'
    assert response.content.startswith(b"ply\nformat binary_little_endian 1.0\n")
    assert f"element vertex {stub.mesh.num_verts}\n".encode() in response.content[:400]


def test_fill_field_reaches_the_options_and_health_shows_the_model_default(client):
    form = MeshForm(b"", "a.png", "glb", 8, None, False, 64, None, True, True, 0)
    assert form.to_options().fill is None  # the model's own setting
    assert MeshForm(b"", "a.png", "glb", 8, None, False, 64, None, True, True, 0, fill=False).to_options().fill is False
    assert client.get("/health").json()["model"]["silhouette_fill"] is False  # the stub has no config: TripoSR's


def test_options_left_out_take_the_models_own_settings():
    """No threshold, foreground ratio or fill in the request: the model config's 3.5, 0.6 and fill, not the global
    defaults (25, 0.85, no fill); given, the request's own values win."""
    model = ConfiguredStub()
    client = TestClient(create_app(model, settings=SMALL_SETTINGS, ui=False))
    summary = client.get("/health").json()["model"]
    assert (summary["mesh_threshold"], summary["foreground_ratio"], summary["silhouette_fill"]) == (3.5, 0.6, True)
    assert post(client, {"mc_resolution": "16"}).status_code == 200
    assert model.extract_calls[-1]["threshold"] == 3.5 and isinstance(model.weights[-1], SilhouetteFill)
    assert abs(object_share(model.images[-1]) - 0.6) < 0.01
    given = {"mc_resolution": "16", "threshold": "7", "foreground_ratio": "0.4", "fill": "false"}
    assert post(client, given).status_code == 200
    assert model.extract_calls[-1]["threshold"] == 7.0 and type(model.weights[-1]) is SilhouetteHull
    assert abs(object_share(model.images[-1]) - 0.4) < 0.01


def test_remove_background_false_gives_the_model_the_image_as_it_is(client, stub):
    """No background removal nor framing: the square keeps its place (half the side, as uploaded); the upload's own
    alpha still says where the object is (the transparent surround is the background grey, and carved)."""
    assert post(client, {"mc_resolution": "16", "remove_background": "false"}).status_code == 200
    (image,) = stub.images
    torch.testing.assert_close(image[0, 0, 0], torch.full((3,), 0.5), atol=1 / 255, rtol=0)
    assert abs(object_share(image) - 0.5) < 0.02  # (the 8x upscale blurs the square's edge)
    assert stub.extract_calls == [{"resolution": 16, "threshold": 25.0, "method": "coarse_to_fine", "carved": True}]


def test_a_baked_texture_is_unwrapped_on_at_most_bake_max_faces(stub, monkeypatch):
    """With no target face count, baking decimates the mesh to BAKE_MAX_FACES before the UV unwrap (whose time grows
    steeply with faces); vertex colours keep every face."""
    from monorecon import api
    from monorecon.core import bake

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)  # 1280 faces
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    stub.mesh = Mesh(verts, torch.tensor(sphere.faces), vertex_colors=torch.full_like(verts, 0.5))
    unwrapped, real_bake = [], bake.bake_texture

    def recording_bake(mesh, *args, **kwargs):
        unwrapped.append(mesh.num_faces)
        return real_bake(mesh, *args, **kwargs)

    monkeypatch.setattr(bake, "bake_texture", recording_bake)
    monkeypatch.setattr(api, "BAKE_MAX_FACES", 300)
    client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
    baked = post(client, {"mc_resolution": "16", "bake_texture": "true", "texture_resolution": "64"})
    assert baked.status_code == 200, baked.text
    (faces,) = unwrapped
    assert 200 <= faces <= 300 and int(baked.headers["x-mesh-faces"]) == faces
    assert int(post(client, {"mc_resolution": "16"}).headers["x-mesh-faces"]) == 1280


def test_download_names_are_sanitised():
    form = MeshForm(b"", "../../etc/pass wd.png", "glb", 8, 25.0, False, 64, 0.85, True, True, 0)
    assert form.stem == "pass_wd"
    assert MeshForm(b"", "☃.png", "glb", 8, 25.0, False, 64, 0.85, True, True, 0).stem == "mesh"


def test_openapi_documents_the_form_and_its_caps(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/reconstruct"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    properties = schema["components"]["schemas"][body["$ref"].split("/")[-1]]["properties"]
    assert set(properties) == {
        "image", "format", "mc_resolution", "threshold", "bake_texture", "texture_resolution", "foreground_ratio",
        "remove_background", "carve", "fill", "project_input", "unlit", "smooth", "object_height", "origin", "seed",
            "bundle",
    }  # fmt: skip
    assert properties["mc_resolution"]["maximum"] == 64 and properties["mc_resolution"]["default"] == 64
    assert properties["format"]["enum"] == ["glb", "obj", "ply", "stl", "usdz"]


# --------------------------------------------------------------------------------------------------------------------
# Bad input: one-line JSON errors
# --------------------------------------------------------------------------------------------------------------------
def test_bad_images_get_400(client):
    good = object_png()
    assert "not_an_image.png" in assert_one_line_error(post(client, image=b"hello", name="not_an_image.png"), 400)
    assert_one_line_error(post(client, image=good[: len(good) // 2]), 400)  # truncated PNG
    assert "empty" in assert_one_line_error(post(client, image=b""), 400)
    wide = png_upload(np.full((8, 600, 4), 255, dtype=np.uint8))  # side over max_image_side = 512
    assert "600" in assert_one_line_error(post(client, image=wide), 400)


def test_unusable_images_get_422(client):
    transparent = png_upload(np.zeros((32, 32, 4), dtype=np.uint8))
    assert "alpha" in assert_one_line_error(post(client, image=transparent), 422)
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # no plain background
    assert "background" in assert_one_line_error(post(client, image=png_upload(noisy)), 422)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"mc_resolution": "65"}, "mc_resolution"),  # above the server cap
        ({"mc_resolution": "4"}, "mc_resolution"),
        ({"mc_resolution": "abc"}, "mc_resolution"),
        ({"threshold": "nan"}, "threshold"),
        ({"threshold": "0"}, "threshold"),  # densities are >= 0: no surface at a level <= 0
        ({"threshold": "-1"}, "threshold"),
        ({"format": "fbx"}, "format"),
        ({"texture_resolution": "100000"}, "texture_resolution"),
        ({"foreground_ratio": "0"}, "foreground_ratio"),
        ({"seed": "-1"}, "seed"),
        ({"bake_texture": "maybe"}, "bake_texture"),
        ({"carve": "perhaps"}, "carve"),
        ({"fill": "sometimes"}, "fill"),
        ({"project_input": "partly"}, "project_input"),
        ({"unlit": "dim"}, "unlit"),
        ({"smooth": "-1"}, "smooth"),
        ({"smooth": "10001"}, "smooth"),
        ({"object_height": "-1"}, "object_height"),
        ({"object_height": "nan"}, "object_height"),
        ({"object_height": "1001"}, "object_height"),
        ({"object_height": "1e-15"}, "object_height"),  # its faces' areas underflow float32
        ({"origin": "top"}, "origin"),
        ({"format": "ply", "bake_texture": "true"}, "PLY"),
        ({"format": "stl", "bake_texture": "true"}, "STL"),
        ({"format": "obj", "unlit": "true"}, "OBJ files have no unlit material"),
        ({"format": "ply", "unlit": "true"}, "PLY files have no unlit material"),
        ({"format": "stl", "unlit": "true"}, "STL files have no unlit material"),
    ],
)
def test_bad_options_get_422_naming_the_field(client, stub, data, field):
    assert field in assert_one_line_error(post(client, data), 422)
    assert stub.extract_calls == []  # refused before any model work


def test_uploads_are_decoded_one_at_a_time_holding_the_model(stub, monkeypatch):
    """A decoded 4096 x 4096 image takes ~0.3 GB: requests waiting for the model must not each hold one."""
    decode, held = ReconstructionService.decode_image, []

    def decode_and_record(service, data, filename):
        held.append(service._lock.locked())
        return decode(service, data, filename)

    monkeypatch.setattr(ReconstructionService, "decode_image", decode_and_record)
    client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
    assert post(client, {"mc_resolution": "16"}).status_code == 200
    assert held == [True]


def test_missing_image_gets_422(client):
    assert "image" in assert_one_line_error(client.post("/reconstruct", data={"mc_resolution": "16"}), 422)
    text = client.post("/reconstruct", data={"image": "photo.png"})  # a text field, not a file
    message = "image: expected a file (a multipart part with a filename), got a text field"
    assert assert_one_line_error(text, 422) == message


def test_request_over_the_size_limit_gets_413(client, stub):
    big = b"\x00" * (300 * 1024)
    assert "limit" in assert_one_line_error(post(client, image=big), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"\x00" * 8192

    response = client.post("/reconstruct", content=chunks(), headers={"content-type": "multipart/form-data; b=x"})
    assert_one_line_error(response, 413)
    assert stub.images == []


def test_unexpected_model_error_is_a_one_line_500(stub):
    broken = StubModel(fail=RuntimeError("CUDA exploded\n  File 'x.py', line 1"))
    client = TestClient(create_app(broken, settings=SMALL_SETTINGS, ui=False), raise_server_exceptions=False)
    detail = assert_one_line_error(post(client), 500)
    assert "RuntimeError" in detail and "exploded" not in detail


# --------------------------------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------------------------------
def test_requests_run_one_at_a_time():
    slow = StubModel(encode_delay=0.2)
    client = TestClient(create_app(slow, settings=SMALL_SETTINGS, ui=False))
    statuses: list[int] = []
    threads = [threading.Thread(target=lambda: statuses.append(post(client).status_code)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert statuses == [200, 200, 200]
    assert slow.max_active == 1 and len(slow.images) == 3


def test_busy_server_answers_503_after_the_queue_timeout(stub):
    settings = ServerSettings(max_mc_resolution=64, queue_timeout_s=0.1)
    app = create_app(stub, settings=settings, ui=False)
    client = TestClient(app)
    holder_ready, release = threading.Event(), threading.Event()

    def hold_the_model() -> None:
        with app.state.service.exclusive():
            holder_ready.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_model)
    holder.start()
    holder_ready.wait(10)
    try:
        assert "busy" in assert_one_line_error(post(client), 503)
    finally:
        release.set()
        holder.join()
    assert post(client).status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# Settings and start-up
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"max_mc_resolution": 4}, "max_mc_resolution"),
        ({"max_upload_bytes": 10}, "max_upload_bytes"),
        ({"queue_timeout_s": 0.0}, "queue_timeout_s"),
        ({"body_timeout_s": 0.0}, "body_timeout_s"),
        ({"body_timeout_s": float("nan")}, "body_timeout_s"),
        ({"max_queued": -1}, "max_queued"),
        ({"max_queued": 10**6}, "max_queued"),
        ({"preview_frames": 0}, "preview_frames"),
        ({"preview_frames": 500}, "preview_frames"),
        ({"max_image_side": 8}, "max_image_side"),
        ({"max_image_side": 20000}, "max_image_side"),
        ({"max_texture_resolution": 32}, "max_texture_resolution"),
        ({"max_texture_resolution": 100000}, "max_texture_resolution"),
        ({"preview_size": 8}, "preview_size"),
        ({"preview_size": 4096}, "preview_size"),
    ],
)
def test_bad_settings_raise(options, name):
    with pytest.raises(ValueError, match=name):
        ServerSettings(**options)


def test_run_server_refuses_a_bad_port_before_loading():
    with pytest.raises(ValueError, match="port"):
        run_server(port=70000, weights="/nonexistent")


def test_missing_weights_raise_value_error():
    with pytest.raises(ValueError, match="not found"):
        create_app(weights="/nonexistent/model.safetensors")


# --------------------------------------------------------------------------------------------------------------------
# Real (reduced, random-weights) TripoSR model
# --------------------------------------------------------------------------------------------------------------------
def test_real_tiny_model_matches_the_python_api(tmp_path):
    from monorecon.api import ReconstructOptions, reconstruct_full

    app = create_app(weights=TINY_WEIGHTS, settings=SMALL_SETTINGS, ui=False)
    client = TestClient(app)
    health = client.get("/health").json()["model"]
    assert health["class"] == "TripoSRModel" and health["source"] == str(TINY_WEIGHTS)
    assert health["cond_image_size"] == 80

    image = object_png(color=(40, 160, 90))
    response = post(client, {"mc_resolution": "24", "format": "ply"}, image=image)
    assert response.status_code == 200, response.text
    served = trimesh.load(io.BytesIO(response.content), file_type="ply", process=False)

    # The same image through the Python API, as the CLI reads it from a file.
    (tmp_path / "input.png").write_bytes(image)
    model = app.state.service.model
    direct = reconstruct_full(tmp_path / "input.png", model, ReconstructOptions(mc_resolution=24)).mesh
    assert len(served.faces) == direct.num_faces > 0
    np.testing.assert_allclose(
        np.sort(np.asarray(served.vertices), axis=0), np.sort(direct.verts.numpy(), axis=0), atol=1e-6
    )
    # The smoothing field reaches the API's option: the same smoothed mesh, different from the plain one.
    response = post(client, {"mc_resolution": "24", "format": "ply", "smooth": "10"}, image=image)
    smoothed = trimesh.load(io.BytesIO(response.content), file_type="ply", process=False)
    options = ReconstructOptions(mc_resolution=24, smooth_iterations=10)
    direct_smoothed = reconstruct_full(tmp_path / "input.png", model, options).mesh
    np.testing.assert_allclose(
        np.sort(np.asarray(smoothed.vertices), axis=0), np.sort(direct_smoothed.verts.numpy(), axis=0), atol=1e-6
    )
    assert np.abs(np.sort(np.asarray(smoothed.vertices), axis=0) - np.sort(direct.verts.numpy(), axis=0)).max() > 1e-3


# --------------------------------------------------------------------------------------------------------------------
# Documented defaults, headers, limits and start-up
# --------------------------------------------------------------------------------------------------------------------
def test_default_settings_are_the_documented_limits():
    """docs/server.md's table: 20 MiB, 4096 px, mc 256, texture 2048, 600 s, 12 frames of 160 px."""
    settings = ServerSettings()
    assert settings.max_upload_bytes == 20 * 2**20 and settings.max_image_side == 4096
    assert settings.max_mc_resolution == 256 and settings.max_texture_resolution == 2048
    assert settings.queue_timeout_s == 600 and (settings.preview_frames, settings.preview_size) == (12, 160)


def test_texture_resolution_default_and_cap_follow_the_settings(stub):
    """Default 1024 (docs), lowered to a smaller server cap; a request over the cap is refused before model work."""
    schema_default = multipart_schema(TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False)))
    assert schema_default["texture_resolution"]["default"] == 1024
    assert schema_default["texture_resolution"]["minimum"] == 64
    capped = ServerSettings(max_mc_resolution=64, max_texture_resolution=128)
    client = TestClient(create_app(stub, settings=capped, ui=False))
    properties = multipart_schema(client)
    assert properties["texture_resolution"]["default"] == 128 and properties["texture_resolution"]["maximum"] == 128
    data = {"bake_texture": "true", "texture_resolution": "256"}
    assert "texture_resolution" in assert_one_line_error(post(client, data), 422)
    assert stub.extract_calls == []


def multipart_schema(client: TestClient) -> dict:
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/reconstruct"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    return schema["components"]["schemas"][body["$ref"].split("/")[-1]]["properties"]


@pytest.mark.parametrize(
    ("filename", "stem"),
    [
        ("a" * 100 + ".png", "a" * 64),  # long names are cut to 64 characters
        ("b" * 60 + ".jpeg", "b" * 60),
        (".hidden.png", "hidden"),  # no hidden (dot) files
        ("..png", "mesh"),
        ("", "mesh"),
        ("x y+z.tar.png", "x_y_z.tar"),
    ],
)
def test_download_stem_rules(filename, stem):
    assert MeshForm(b"", filename, "glb", 8, None, False, 64, None, True, True, 0).stem == stem


class SeedRecordingStub(StubModel):
    """The stub with its mesh moved off the origin; ``encode`` records three draws of torch's global generator."""

    OFFSET = (0.1, 0.3, -0.2)

    def __init__(self) -> None:
        super().__init__()
        self.mesh = Mesh(self.mesh.verts + torch.tensor(self.OFFSET), self.mesh.faces, self.mesh.vertex_colors)
        self.draws: list[torch.Tensor] = []

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.draws.append(torch.rand(3))
        return super().encode(images)


def test_seed_and_origin_defaults_reach_the_model():
    """``seed`` seeds torch before the model runs (default 0); ``origin`` defaults to the model's frame and
    ``object_height`` to the model's scale: the mesh comes back where the model put it."""
    model = SeedRecordingStub()
    client = TestClient(create_app(model, settings=SMALL_SETTINGS, ui=False))
    plain = {"mc_resolution": "8", "format": "ply", "carve": "false", "project_input": "false"}
    response = post(client, plain)
    assert response.status_code == 200, response.text
    served = np.asarray(trimesh.load(io.BytesIO(response.content), file_type="ply", process=False).vertices)
    np.testing.assert_allclose(np.sort(served, axis=0), np.sort(model.mesh.verts.numpy(), axis=0), atol=1e-6)
    assert post(client, {**plain, "seed": "1234"}).status_code == 200
    expected = [torch.Generator().manual_seed(seed) for seed in (0, 1234)]
    for draw, generator in zip(model.draws, expected, strict=True):
        torch.testing.assert_close(draw, torch.rand(3, generator=generator), atol=0, rtol=0)


def test_health_describes_a_torch_model():
    """Parameter count, device, compute dtype and scene-code shape of an ``nn.Module`` model (docs: /health)."""

    class ModuleStub(torch.nn.Module):
        autocast_dtype = torch.bfloat16
        scene_code_shape = (3, 40, 64, 64)

        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 4, device="meta")  # 3 * 4 weights + 4 biases

    summary = TestClient(create_app(ModuleStub(), settings=SMALL_SETTINGS, ui=False)).get("/health").json()["model"]
    assert summary["class"] == "ModuleStub" and summary["parameters"] == 16 and summary["device"] == "meta"
    assert summary["compute_dtype"] == "bfloat16" and summary["scene_code_shape"] == [3, 40, 64, 64]
    plain = TestClient(create_app(StubModel(), settings=SMALL_SETTINGS, ui=False)).get("/health").json()["model"]
    assert plain["compute_dtype"] == "float32" and "parameters" not in plain


def test_pipeline_value_error_is_a_one_line_422():
    """A ValueError of the pipeline (e.g. no surface) is the client's 422, cut to its first line."""

    class NoSurface(StubModel):
        def extract_mesh(self, *args, **kwargs) -> Mesh:
            raise ValueError("no surface at threshold 25\n  try a lower threshold")

    client = TestClient(create_app(NoSurface(), settings=SMALL_SETTINGS, ui=False))
    assert assert_one_line_error(post(client, {"mc_resolution": "8"}), 422) == "no surface at threshold 25"


def test_mesh_size_and_server_timing_headers():
    """X-Mesh-Vertices/-Faces of the stub's icosphere (10 * 4 + 2 vertices, 20 * 4 faces); Server-Timing in
    milliseconds (an encode that sleeps 0.3 s lasts >= 300 ms), its stages in the documented order."""
    client = TestClient(create_app(StubModel(encode_delay=0.3), settings=SMALL_SETTINGS, ui=False))
    response = post(client, {"mc_resolution": "8", "format": "ply"})
    assert response.status_code == 200, response.text
    assert (response.headers["x-mesh-vertices"], response.headers["x-mesh-faces"]) == ("42", "80")
    entries = [entry.split(";dur=") for entry in response.headers["server-timing"].split(", ")]
    names = [name for name, _ in entries]
    documented = ["preprocess", "encode", "carve", "extract", "cleanup", "colour", "bake", "write"]
    assert names == [name for name in documented if name in names] and names[-1] == "write"
    milliseconds = dict((name, float(value)) for name, value in entries)
    assert 300 <= milliseconds["encode"] < 30_000


def multipart_body(pad: int) -> tuple[bytes, str]:
    """A hand-built multipart body: the image part, ``pad`` bytes after the PNG's end (which readers ignore), and
    four options."""
    boundary = "monorecon-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + object_png()
        + b"x" * pad
        + b"\r\n",
        *(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in (("mc_resolution", 8), ("format", "ply"), ("carve", "false"), ("project_input", "false"))
        ),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_body_of_exactly_the_limit_is_accepted(client):
    """The limit is the largest accepted body: max_upload_bytes passes, one byte more is 413 (declared or chunked)."""
    limit = SMALL_SETTINGS.max_upload_bytes
    bare = len(multipart_body(0)[0])
    body, content_type = multipart_body(limit - bare)
    assert len(body) == limit
    headers = {"content-type": content_type}
    assert client.post("/reconstruct", content=body, headers=headers).status_code == 200
    assert client.post("/reconstruct", content=iter([body[:1000], body[1000:]]), headers=headers).status_code == 200
    over, _ = multipart_body(limit - bare + 1)
    assert "256 KiB" in assert_one_line_error(client.post("/reconstruct", content=over, headers=headers), 413)
    chunked = client.post("/reconstruct", content=iter([over[:1000], over[1000:]]), headers=headers)
    assert_one_line_error(chunked, 413)


def test_run_server_passes_its_options_and_warns_off_loopback(monkeypatch, caplog):
    import uvicorn

    from monorecon import server

    created, served = [], []
    monkeypatch.setattr(server, "create_app", lambda **kwargs: created.append(kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.append((app, kwargs)))
    with caplog.at_level("WARNING", logger="monorecon.server"):
        run_server("0.0.0.0", 8123, "w.safetensors", device="cpu", settings=SMALL_SETTINGS, ui=False, log_level="debug")
    assert "no authentication" in caplog.text
    options = {"config": None, "device": "cpu", "dtype": torch.float32, "settings": SMALL_SETTINGS, "ui": False}
    hosts = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
    assert created == [{"model": None, "weights": "w.safetensors", **options, "allowed_hosts": hosts}]
    assert served == [("app", {"host": "0.0.0.0", "port": 8123, "log_level": "debug"})]
    for host in ("127.0.0.1", "::1", "localhost"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="monorecon.server"):
            run_server(host, 8000)
        assert "no authentication" not in caplog.text, host
    for port in (True, -1, 65536, 80.0):
        with pytest.raises(ValueError, match="port"):
            run_server(port=port)
    assert len(created) == 4  # the bad ports were refused before loading anything


def test_mesh_file_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="unknown mesh format 'fbx'; expected one of glb, obj, ply, stl, usdz"):
        mesh_file(StubModel().mesh, "fbx", "x")
