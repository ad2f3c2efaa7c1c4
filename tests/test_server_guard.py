"""The server's guards and messages: Host / Origin checks, a stalled or queued-out upload, what /preview does off the
event loop, the bundle's result.json against the command's, and the wording of its refusals and logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from monorecon import webui
from monorecon.cli import main
from monorecon.server import (
    DEFAULT_ALLOWED_HOSTS,
    BodySizeLimit,
    ReconstructionService,
    ServerSettings,
    create_app,
    run_server,
)
from test_server import SMALL_SETTINGS, TINY_WEIGHTS, StubModel, assert_one_line_error, object_png, png_upload, post
from test_server_queue import HeldModel

EVIL = "http://evil.example"


@pytest.fixture
def stub() -> StubModel:
    return StubModel()


@pytest.fixture
def local_client(stub) -> TestClient:
    """A client of a server that answers the loopback names (as :func:`run_server` makes it) at localhost:8000."""
    app = create_app(stub, settings=SMALL_SETTINGS, allowed_hosts=DEFAULT_ALLOWED_HOSTS)
    return TestClient(app, base_url="http://localhost:8000")


# --------------------------------------------------------------------------------------------------------------------
# Host and Origin
# --------------------------------------------------------------------------------------------------------------------
def test_a_cross_site_post_is_refused_before_any_work(local_client, stub):
    """A page on another site can post a form to the local server: its Origin gives it away."""
    for origin in (EVIL, "null", "http://localhost:9999", "http://localhost.evil.example:8000"):
        response = local_client.post(
            "/reconstruct", files={"image": ("a.png", object_png(), "image/png")}, headers={"Origin": origin}
        )
        assert "cross-site" in assert_one_line_error(response, 403), origin
    assert stub.extract_calls == []


def test_the_origin_is_checked_whatever_the_host_list(stub):
    """``create_app`` with no Host list (in-process clients) still refuses a cross-site post."""
    client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
    response = client.post(
        "/reconstruct", files={"image": ("a.png", object_png(), "image/png")}, headers={"Origin": EVIL}
    )
    assert "cross-site request from http://evil.example refused" in assert_one_line_error(response, 403)
    assert stub.extract_calls == []


def test_the_servers_own_page_and_clients_without_origin_still_work(local_client):
    page = local_client.get("/")
    assert page.status_code == 200
    files = {"image": ("a.png", object_png(), "image/png")}
    own = {"Origin": "http://localhost:8000"}  # what a browser sends from the page at http://localhost:8000/
    assert local_client.post("/preview", files=files, data={"mc_resolution": "8"}, headers=own).status_code == 200
    assert local_client.post("/reconstruct", files=files).status_code == 200  # curl: no Origin
    assert local_client.get("/health", headers={"Origin": EVIL}).status_code == 200  # reads carry no Origin check


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "127.0.0.2:8000", ""])
def test_a_host_off_the_allow_list_is_refused(local_client, host):
    """DNS rebinding: a name of the attacker's pointed at 127.0.0.1 reaches the server with that name as Host."""
    response = local_client.get("/health", headers={"Host": host})
    assert "host" in assert_one_line_error(response, 403)


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "127.0.0.1:8000", "[::1]:8000", "::1"])
def test_loopback_hosts_are_answered(local_client, host):
    assert local_client.get("/health", headers={"Host": host}).status_code == 200


def test_run_server_allows_the_bound_host_and_the_given_names(monkeypatch, caplog):
    import uvicorn

    from monorecon import server

    created = []
    monkeypatch.setattr(server, "create_app", lambda **kwargs: created.append(kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    with caplog.at_level("INFO", logger="monorecon.server"):
        run_server("0.0.0.0", 8123, allowed_hosts=("box.lan",))
    assert set(created[0]["allowed_hosts"]) == {"localhost", "127.0.0.1", "::1", "0.0.0.0", "box.lan"}
    assert "box.lan" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="monorecon.server"):
        run_server("0.0.0.0", 8123)
    assert "--allowed-host" in caplog.text  # clients reach 0.0.0.0 under names the server cannot know
    app = create_app(StubModel(), settings=SMALL_SETTINGS, allowed_hosts=("*",))
    assert TestClient(app).get("/health", headers={"Host": "any.example"}).status_code == 200


# --------------------------------------------------------------------------------------------------------------------
# Request bodies: a stall, a full queue, one copy
# --------------------------------------------------------------------------------------------------------------------
def run_middleware(middleware: BodySizeLimit, receive) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/reconstruct", "headers": [(b"content-length", b"1000")]}
    asyncio.run(middleware(scope, receive, send))
    return sent


def test_a_stalled_upload_gets_408():
    """A client that sends its headers and part of the body, then nothing, is answered and let go."""
    calls = []

    async def app(scope, receive, send) -> None:
        calls.append(scope)

    stalled = [{"type": "http.request", "body": b"x" * 100, "more_body": True}]

    async def receive() -> dict:
        if stalled:
            return stalled.pop()
        await asyncio.sleep(3600)
        raise AssertionError("not timed out")

    sent = run_middleware(BodySizeLimit(app, max_bytes=10_000, timeout_s=0.2), receive)
    assert sent[0]["status"] == 408 and calls == []
    assert "stalled" in json.loads(sent[1]["body"])["detail"]


def test_a_full_queue_refuses_before_reading_the_body():
    service = ReconstructionService(StubModel(), ServerSettings(max_queued=0))

    async def app(scope, receive, send) -> None:
        raise AssertionError("the app must not run")

    async def receive() -> dict:
        raise AssertionError("the body must not be read")

    with service.exclusive():
        sent = run_middleware(BodySizeLimit(app, max_bytes=10_000, service=service), receive)
    assert sent[0]["status"] == 503 and dict(sent[0]["headers"])[b"retry-after"]
    assert "server busy" in json.loads(sent[1]["body"])["detail"]


def test_the_body_is_handed_on_whole_in_one_message():
    received = []

    async def app(scope, receive, send) -> None:
        received.append(await receive())

    parts = [
        {"type": "http.request", "body": b"b" * 10},
        {"type": "http.request", "body": b"a" * 10, "more_body": True},
    ]

    async def receive() -> dict:
        return parts.pop()

    run_middleware(BodySizeLimit(app, max_bytes=10_000), receive)
    assert received == [{"type": "http.request", "body": b"a" * 10 + b"b" * 10, "more_body": False}]


# --------------------------------------------------------------------------------------------------------------------
# Options, messages, logs
# --------------------------------------------------------------------------------------------------------------------
def test_foreground_ratio_without_background_removal_is_refused(stub):
    """The ratio frames what background removal finds: with the image kept as it is it would be ignored (and
    recorded as if it had run); the command line refuses the pair too."""
    client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
    detail = assert_one_line_error(post(client, {"remove_background": "false", "foreground_ratio": "0.5"}), 422)
    assert "foreground_ratio" in detail and "remove_background" in detail
    assert stub.extract_calls == []
    assert post(client, {"remove_background": "false"}).status_code == 200


@pytest.mark.parametrize("field", ["threshold", "mc_resolution", "format", "seed"])
def test_an_empty_field_is_refused_not_taken_as_the_default(stub, field):
    client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
    detail = assert_one_line_error(post(client, {field: ""}), 422)
    assert field in detail and "empty" in detail


def png_header(width: int, height: int) -> bytes:
    """A PNG of that size as far as its header goes (no pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")


def test_upload_errors_name_the_problem_in_the_apis_terms(stub):
    client = TestClient(create_app(stub, settings=ServerSettings(max_image_side=4096), ui=False))
    detail = assert_one_line_error(post(client, image=b"just some text", name="notes.png"), 400)
    assert detail == "cannot read image notes.png: not an image PIL can read"
    detail = assert_one_line_error(post(client, image=png_header(20000, 20000), name="huge.png"), 400)
    assert "maximum side 4096" in detail and "decompression" not in detail
    noisy = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    detail = assert_one_line_error(post(client, image=png_upload(noisy)), 422)
    assert "RGBA" in detail and "remove_background=false" in detail
    assert "--" not in detail and "matting" not in detail  # no command-line options, no model the API lacks


def test_one_waiting_request_is_counted_in_the_singular():
    app = create_app(StubModel(), settings=ServerSettings(max_queued=1, max_mc_resolution=64), ui=False)
    service = app.state.service
    service._waiting.append(object())  # one request waits
    held = HeldModel(app)
    try:
        detail = assert_one_line_error(post(TestClient(app)), 503)
    finally:
        held.release()
        service._waiting.clear()
    assert "1 request is waiting" in detail


def test_refusals_are_logged_with_their_reason_and_start_up_names_model_and_limits(stub, caplog):
    with caplog.at_level(logging.INFO, logger="monorecon.server"):
        client = TestClient(create_app(stub, settings=SMALL_SETTINGS, ui=False))
        assert "StubModel" in caplog.text and "max_upload_bytes 262144" in caplog.text
        post(client, {"format": "ply", "unlit": "true"})
        post(client, {"mc_resolution": "4"})
    assert "POST /reconstruct: 422 PLY files have no unlit material" in caplog.text
    assert "POST /reconstruct: 422 mc_resolution" in caplog.text


# --------------------------------------------------------------------------------------------------------------------
# The bundle's result.json, /preview off the event loop
# --------------------------------------------------------------------------------------------------------------------
def test_bundle_result_json_has_the_keys_the_command_writes(tmp_path, capsys):
    image = tmp_path / "duck.png"
    image.write_bytes(object_png())
    assert main(["reconstruct", str(image), "-o", str(tmp_path / "out"), "--weights", str(TINY_WEIGHTS),
                 "--mc-resolution", "24", "--quiet"]) == 0  # fmt: skip
    (command_record,) = [json.loads(path.read_text()) for path in (tmp_path / "out").rglob("result.json")]

    client = TestClient(create_app(weights=TINY_WEIGHTS, settings=SMALL_SETTINGS, ui=False))
    response = post(client, {"mc_resolution": "24", "bundle": "true"}, image=image.read_bytes(), name="duck.png")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        served_record = json.loads(archive.read("result.json"))
    assert list(served_record) == list(command_record)
    assert served_record["model"] == command_record["model"] == {
        "weights": str(Path(TINY_WEIGHTS).resolve()), "config": None, "device": "cpu", "dtype": "float32"
    }  # fmt: skip


def test_preview_answer_is_built_off_the_event_loop(monkeypatch):
    """The viewer arrays, images and JSON of a large mesh take seconds: not on the loop, which answers /health."""
    real, on_loop = webui.viewer_payload, []

    def recording(mesh):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(mesh)

    monkeypatch.setattr(webui, "viewer_payload", recording)
    client = TestClient(create_app(StubModel(), settings=SMALL_SETTINGS))
    files = {"image": ("a.png", object_png(), "image/png")}
    response = client.post("/preview", files=files, data={"mc_resolution": "8"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json()["faces"] == 80 and on_loop == [False]
