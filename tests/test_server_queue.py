"""The server's queue and request checks: first come first served, a full queue and a left client, /health under
load, what is refused before queueing, unknown form fields, download names, and the listen address check.

The model is held from a test thread (:meth:`ReconstructionService.exclusive`) to make requests wait; the stub
model records what ran."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.parse
import zipfile

import pytest
from fastapi.testclient import TestClient

from monorecon.cli import main
from monorecon.server import ServerSettings, check_listen_address, create_app
from test_server import SMALL_SETTINGS, StubModel, assert_one_line_error, object_png, post
from test_webui import live_server

COLOURS = {"first": (255, 0, 0), "second": (0, 255, 0), "third": (0, 0, 255)}


def wait_until(condition, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class HeldModel:
    """Holds the app's model from a thread until :meth:`release`."""

    def __init__(self, app) -> None:
        self.service = app.state.service
        self._ready, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold)
        self._thread.start()
        assert self._ready.wait(10)

    def _hold(self) -> None:
        with self.service.exclusive():
            self._ready.set()
            self._release.wait(60)

    def release(self) -> None:
        self._release.set()
        self._thread.join(10)


def test_waiting_requests_run_first_come_first_served():
    stub = StubModel()
    app = create_app(stub, settings=SMALL_SETTINGS, ui=False)
    client = TestClient(app)
    held = HeldModel(app)
    statuses: dict[str, int] = {}
    threads = []
    try:
        for order, (name, colour) in enumerate(COLOURS.items(), start=1):

            def send(name=name, colour=colour) -> None:
                statuses[name] = post(client, image=object_png(color=colour)).status_code

            threads.append(threading.Thread(target=send))
            threads[-1].start()
            wait_until(lambda order=order: len(held.service._waiting) == order, f"request {order} to queue")
    finally:
        held.release()
    for thread in threads:
        thread.join(30)
    assert statuses == dict.fromkeys(COLOURS, 200)
    seen = [
        tuple(round(float(c) * 255) for c in image[0, image.shape[1] // 2, image.shape[2] // 2])
        for image in stub.images
    ]
    assert seen == list(COLOURS.values())


def test_a_full_queue_answers_503_at_once_with_retry_after():
    stub = StubModel()
    settings = ServerSettings(max_upload_bytes=256 * 1024, max_mc_resolution=64, max_queued=1, queue_timeout_s=60)
    app = create_app(stub, settings=settings, ui=False)
    client = TestClient(app)
    held = HeldModel(app)
    waiting: list[int] = []
    thread = threading.Thread(target=lambda: waiting.append(post(client).status_code))
    try:
        thread.start()
        wait_until(lambda: len(held.service._waiting) == 1, "the first request to queue")
        response = post(client)
        assert "1 request is waiting" in assert_one_line_error(response, 503)
        assert int(response.headers["retry-after"]) >= 1
    finally:
        held.release()
    thread.join(30)
    assert waiting == [200] and len(stub.images) == 1


def test_queue_timeout_503_carries_retry_after():
    app = create_app(StubModel(), settings=ServerSettings(max_mc_resolution=64, queue_timeout_s=0.1), ui=False)
    held = HeldModel(app)
    try:
        response = post(TestClient(app))
    finally:
        held.release()
    assert "busy" in assert_one_line_error(response, 503) and int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("image", "data", "status", "words"),
    [
        (b"", {}, 400, "empty"),
        (b"not an image at all", {}, 400, "cannot read image"),
        (None, {"format": "obj", "unlit": "true"}, 422, "no unlit material"),
        (None, {"object_height": "1e-7"}, 422, "must be 0 (the model's scale) or lie in"),
    ],
)
def test_bad_uploads_and_options_are_refused_without_waiting_for_the_model(image, data, status, words):
    """While the model is busy (for a minute; the queue gives up after 5 s), what can be refused is refused at
    once: queued, it got 503 "busy"."""
    stub = StubModel()
    app = create_app(stub, settings=ServerSettings(max_mc_resolution=64, queue_timeout_s=5), ui=False)
    held = HeldModel(app)
    try:
        assert words in assert_one_line_error(post(TestClient(app), data, image=image), status)
    finally:
        held.release()
    assert stub.images == []


def test_preview_options_are_refused_without_waiting_for_the_model():
    app = create_app(StubModel(), settings=ServerSettings(max_mc_resolution=64, queue_timeout_s=5))
    held = HeldModel(app)
    try:
        files = {"image": ("a.png", object_png(), "image/png")}
        response = TestClient(app).post("/preview", files=files, data={"format": "obj", "unlit": "true"})
    finally:
        held.release()
    assert "no unlit material" in assert_one_line_error(response, 422)


def raw_request(port: int, fields: dict[str, str]) -> bytes:
    boundary = "queue-test"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="gone.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + object_png()
        + b"\r\n"
        + body
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /reconstruct HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def test_a_request_whose_client_left_while_waiting_never_runs():
    stub = StubModel()
    app = create_app(stub, settings=ServerSettings(max_mc_resolution=64, queue_timeout_s=60), ui=False)
    with live_server(app) as base:
        port = urllib.parse.urlsplit(base).port
        held = HeldModel(app)
        try:
            with socket.create_connection(("127.0.0.1", port)) as connection:
                connection.sendall(raw_request(port, {"mc_resolution": "16"}))
                wait_until(lambda: len(held.service._waiting) == 1, "the request to queue")
            wait_until(lambda: len(held.service._waiting) == 0, "the left request to leave the queue")
        finally:
            held.release()
        assert TestClient(app).get("/health").status_code == 200
    assert stub.images == []


def test_health_answers_while_more_requests_wait_than_the_server_has_worker_threads():
    """Waiting requests hold no worker thread (the pool has 40): /health still answers with 45 waiting."""
    stub = StubModel()
    settings = ServerSettings(max_mc_resolution=64, queue_timeout_s=60, max_queued=100)
    app = create_app(stub, settings=settings, ui=False)
    with live_server(app) as base:
        port = urllib.parse.urlsplit(base).port
        held = HeldModel(app)
        connections = []
        try:
            for _ in range(45):
                connections.append(socket.create_connection(("127.0.0.1", port)))
                connections[-1].sendall(raw_request(port, {"mc_resolution": "16", "format": "ply"}))
            wait_until(lambda: len(held.service._waiting) == 45, "45 requests to queue")
            with socket.create_connection(("127.0.0.1", port), timeout=20) as probe:
                probe.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                assert probe.recv(64).startswith(b"HTTP/1.1 200")
        finally:
            for connection in connections:
                connection.close()
            held.release()


def test_unknown_and_repeated_form_fields_are_refused(client):
    detail = assert_one_line_error(post(client, {"mc_res": "16"}), 422)
    assert detail.startswith("unknown form field mc_res; known: ") and "mc_resolution" in detail
    files = [("image", ("a.png", object_png(), "image/png")), ("image", ("b.png", object_png(), "image/png"))]
    assert "image given more than once" in assert_one_line_error(client.post("/reconstruct", files=files), 422)
    repeated = {"mc_resolution": ["16", "32"]}
    response = client.post("/reconstruct", files={"image": ("a.png", object_png(), "image/png")}, data=repeated)
    assert "mc_resolution given more than once" in assert_one_line_error(response, 422)


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(StubModel(), settings=SMALL_SETTINGS, ui=False))


@pytest.mark.parametrize(
    ("name", "ascii_name", "unicode_name"),
    [
        ("a%22b.png", "a_b.glb", None),  # a browser's escaped quote is decoded, then replaced
        ("Кружка.png", "mesh.glb", "Кружка.glb"),
        ("日本 茶碗.png", "mesh.glb", "日本_茶碗.glb"),
        ("café.png", "caf.glb", "café.glb"),
    ],
)
def test_download_names_keep_letters_of_any_script(client, name, ascii_name, unicode_name):
    disposition = post(client, name=name).headers["content-disposition"]
    assert f'filename="{ascii_name}"' in disposition
    if unicode_name is None:
        assert "filename*" not in disposition
    else:
        assert disposition.endswith(f"; filename*=UTF-8''{urllib.parse.quote(unicode_name)}")


def test_foreground_ratio_nan_is_refused_as_not_finite(client):
    assert "finite" in assert_one_line_error(post(client, {"foreground_ratio": "nan"}), 422)


def test_listen_address_check_names_a_busy_port_and_an_unknown_host():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: .*in use"):
            check_listen_address("127.0.0.1", port)
    with pytest.raises(ValueError, match=r"^cannot listen on nosuchhost\.invalid:80: unknown host"):
        check_listen_address("nosuchhost.invalid", 80)
    check_listen_address("127.0.0.1", 0)


def test_serve_on_a_busy_port_is_a_one_line_error_before_the_model_loads(capsys, monkeypatch):
    import monorecon.server as server

    monkeypatch.setattr(server, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code = main(["serve", "--port", str(taken.getsockname()[1])])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot listen on 127.0.0.1:" in err


def test_the_record_says_no_fill_when_carving_is_off(client):
    """The fill is part of carving: without carving, ``result.json`` records the fill that ran, none."""
    data = {"carve": "false", "fill": "true", "bundle": "true", "mc_resolution": "16"}
    response = post(client, data)
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        options = json.loads(archive.read("result.json"))["options"]
    assert options["carve"] is False and options["fill"] is False
