"""ddpm-serve: the HTTP contract over the embedded model, in process (FastAPI's test client) and as a
real server on loopback (disconnects, SIGTERM drain, the command line)."""

import ast
import base64
import io
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import uvicorn  # noqa: E402
from conftest import assert_one_line_error  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ddpm.core.images import make_grid  # noqa: E402
from ddpm.core.plan import SettingError  # noqa: E402
from ddpm.runtime import DDPM  # noqa: E402
from ddpm.serve.app import Settings, create_app  # noqa: E402
from ddpm.serve.cli import main as serve_main  # noqa: E402
from ddpm.serve.schema import reason  # noqa: E402

TOKEN = "t" * 24


@pytest.fixture(scope="module")
def ddpm():
    return DDPM.load(provider="cpu", threads=1)


@pytest.fixture(scope="module")
def client(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=8))) as client:
        yield client


def npz(response):
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def test_health(client):
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["model"] == "default.onnx" and body["rows_per_call"] == 8


@pytest.mark.parametrize(
    "request_body, plan",
    [
        ({"n": 3, "digits": [3, 8], "steps": 6, "seed": 11}, {"digits": [3, 8], "steps": 6}),
        ({"n": 2, "sampler": "ddim", "steps": 5, "eta": 0.5, "seed": 4}, {"sampler": "ddim", "steps": 5, "eta": 0.5}),
        ({"n": 2, "steps": 8, "seed": 2}, {"steps": 8}),  # ancestral, digits drawn from the class prior
    ],
)
def test_samples_match_the_library(client, ddpm, request_body, plan):
    """The same seed and settings give the digits DDPM.generate (so ddpm-run --seed) gives."""
    got = npz(client.post("/v1/samples", json={**request_body, "format": "npz"}))
    expected = ddpm.generate(request_body["n"], ddpm.plan(**plan), seed=request_body["seed"])
    assert np.abs(got["images"].astype(int) - expected.images.astype(int)).max() <= 1
    settings = json.loads(str(got["settings"]))
    assert int(got["seed"]) == request_body["seed"] == settings["seed"]
    assert settings["sampler"] == expected.settings.sampler and settings["steps"] == expected.settings.steps
    assert settings.get("labels") == (None if expected.settings.labels is None else list(expected.settings.labels))


def test_the_openvino_backend_serves_the_same_digits(ddpm):
    pytest.importorskip("openvino")
    served = DDPM.load(provider="openvino", threads=1)
    with TestClient(create_app(served, Settings(max_rows=4))) as client:
        got = npz(client.post("/v1/samples", json={"n": 2, "sampler": "ddim", "steps": 4, "seed": 5, "format": "npz"}))
    expected = ddpm.generate(2, ddpm.plan(sampler="ddim", steps=4), seed=5)
    assert np.abs(got["images"].astype(int) - expected.images.astype(int)).max() <= 1
    assert json.loads(str(got["settings"]))["provider"] == "OpenVINO CPU fp32"


def test_png_carries_the_seed(client):
    response = client.post("/v1/samples", json={"n": 4, "digits": [1, 2], "steps": 3, "scale": 2})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    seed = int(response.headers["x-ddpm-seed"])  # a fresh one, returned
    image = Image.open(io.BytesIO(response.content))
    assert image.text["ddpm.seed"] == str(seed)
    again = npz(client.post("/v1/samples", json={"n": 4, "digits": [1, 2], "steps": 3, "seed": seed, "format": "npz"}))
    grid = make_grid(again["images"], columns=2, scale=2)  # one column per digit asked for, as ddpm-run draws it
    assert grid.shape == (140, 140) and np.array_equal(np.asarray(image), grid)


def plan_error(ddpm, **plan):
    with pytest.raises(SettingError) as info:
        ddpm.plan(**plan)
    return reason(info.value)


@pytest.mark.parametrize(
    "body, plan",
    [
        ({"n": 2, "eta": 0.5}, {"eta": 0.5}),
        ({"n": 2, "steps": 5000}, {"steps": 5000}),
        ({"n": 2, "sampler": "ddim", "spacing": "cubic"}, {"sampler": "ddim", "spacing": "cubic"}),
        ({"n": 2, "digits": [11]}, {"digits": [11]}),
        (
            {"n": 2, "digits": [1], "guidance": 51},
            {"digits": [1], "guidance": 51.0},
        ),  # a float, as --guidance parses it
        ({"n": 2, "sampler": "nope"}, {"sampler": "nope"}),
    ],
)
def test_bad_settings_give_the_library_reason(client, ddpm, body, plan):
    response = client.post("/v1/samples", json=body)
    assert response.status_code == 422
    assert response.json() == {"detail": plan_error(ddpm, **plan)}


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"n": 0}', "n: Input should be greater than or equal to 1"),
        ('{"n": 65}', "n: Input should be less than or equal to 64"),
        ('{"n": "3"}', "n: Input should be a valid integer"),
        ('{"n": 2, "steps": 2.5}', "steps: Input should be a valid integer"),
        ('{"n": 2, "seed": 1e400}', "seed:"),
        ('{"n": 2, "seed": 99999999999999999999999}', "seed: Input should be less than or equal to"),
        ('{"n": 2, "digits": [1], "guidance": NaN}', "guidance: must be between 0 and 50"),
        ('{"n": 2, "digits": [' + ",".join(["3"] * 1000) + "]}", "digits: List should have at most 64 items"),
        ('{"n": 2, "file": "/etc/passwd"}', "file: Extra inputs are not permitted"),
        ('{"steps": 4}', "n: Field required"),
        ("{bad", "body: not valid JSON"),
        ("[]", "body: Input should be a valid dictionary"),
    ],
)
def test_malformed_bodies_get_one_line(client, content, fragment):
    response = client.post("/v1/samples", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert fragment in detail and "\n" not in detail


def test_oversized_bodies_are_refused(client):
    response = client.post(
        "/v1/samples", content=b"{" + b" " * 100_000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "over 16384 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b" " * 1000

    response = client.post("/v1/samples", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_job_lifecycle(client):
    submitted = client.post("/v1/jobs", json={"n": 2, "digits": [7], "steps": 6, "frames": 3, "show": "both"})
    assert submitted.status_code == 202
    job = submitted.json()
    assert job["steps"] == 6 and job["state"] in ("queued", "running")
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        events = []
        for block in stream.iter_text():
            events += re.findall(r"event: (\w+)\ndata: (.*)\n\n", block)
    names = [name for name, _ in events]
    assert names[-1] == "end" and json.loads(events[-1][1])["state"] == "done"
    frames = [json.loads(data) for name, data in events if name == "frame"]
    assert [frame["index"] for frame in frames] == list(range(len(frames))) and frames[0]["timestep"] == -1
    assert 2 <= len(frames) <= 4
    positions = [json.loads(data)["position"] for name, data in events if name == "progress"]
    assert positions == sorted(positions) and positions[-1] == 6
    view = client.get(f"/v1/jobs/{job['id']}").json()
    assert view["state"] == "done" and view["position"] == 6 and view["frames"] == len(frames)
    gif = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "gif"})
    assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
    png = client.get(f"/v1/jobs/{job['id']}/result")
    assert png.headers["content-type"] == "image/png" and png.headers["x-ddpm-seed"] == str(job["seed"])
    assert client.get(f"/v1/jobs/{job['id']}/result", params={"format": "tiff"}).status_code == 422


def test_unknown_and_unfinished_jobs(client):
    assert client.get("/v1/jobs/nope").status_code == 404
    job = client.post("/v1/jobs", json={"n": 1, "steps": 1000}).json()
    early = client.get(f"/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and "of 1000 steps" in early.json()["detail"]
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 202
    deadline = time.monotonic() + 10
    while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    no_frames = client.post("/v1/jobs", json={"n": 1, "steps": 2}).json()
    while client.get(f"/v1/jobs/{no_frames['id']}").json()["state"] != "done":
        time.sleep(0.02)
    gif = client.get(f"/v1/jobs/{no_frames['id']}/result", params={"format": "gif"})
    assert gif.status_code == 409 and "frames > 0" in gif.json()["detail"]


def test_a_full_queue_answers_429_at_once(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=4, queue_rows=4))) as client:
        long = client.post("/v1/jobs", json={"n": 4, "steps": 1000}).json()
        began = time.monotonic()
        refused = client.post("/v1/samples", json={"n": 1, "steps": 2})
        assert time.monotonic() - began < 1.0
        assert refused.status_code == 429 and "4 of 4 rows" in refused.json()["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        guided = client.post("/v1/jobs", json={"n": 3, "digits": [1]})  # 6 rows: never fits, so not "retry later"
        assert guided.status_code == 422 and "6 rows" in guided.json()["detail"]
        client.delete(f"/v1/jobs/{long['id']}")


def test_metrics(client):
    client.post("/v1/samples", json={"n": 2, "steps": 2})
    text = client.get("/metrics").text
    assert re.search(r'ddpm_http_requests_total\{code="200",route="/v1/samples"\} [1-9]', text)
    for name in (
        "ddpm_queue_depth",
        "ddpm_active_rows",
        "ddpm_rows_per_call",
        "ddpm_steps_per_second",
        "ddpm_network_calls_total",
        'ddpm_request_seconds_bucket{kind="sample"',
        "ddpm_queue_wait_seconds_count",
    ):
        assert name in text, name
    rows = float(re.search(r"^ddpm_rows_per_call (\S+)", text, re.M).group(1))
    assert 1 <= rows <= 8


def test_tokens(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=4, token=TOKEN))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200  # the page itself holds no data; its calls need the token
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            response = client.post("/v1/samples", json={"n": 1, "steps": 2}, headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert client.get("/metrics", headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert client.post("/v1/samples", json={"n": 1, "steps": 2}, headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200


def test_the_token_comes_before_the_body(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=4, token=TOKEN))) as client:
        broken = client.post(
            "/v1/samples", content='{"n": 1, "digits": [3', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 401
        huge = client.post("/v1/samples", content=b" " * 100_000, headers={"content-type": "application/json"})
        assert huge.status_code == 401


def test_no_cors_unless_asked(client, ddpm):
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/samples", headers=preflight).headers
    with TestClient(create_app(ddpm, Settings(max_rows=4, cors_origins=["http://elsewhere.example"]))) as other:
        allowed = other.options("/v1/samples", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "http://elsewhere.example"


# -- a real server on loopback -------------------------------------------------------------------


@pytest.fixture
def live(ddpm):
    """The app under uvicorn on a free loopback port, in a thread."""
    app = create_app(ddpm, Settings(max_rows=8))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield app, port
    server.should_exit = True
    thread.join(10)


def test_a_client_that_leaves_cancels_its_request(live):
    app, port = live
    body = json.dumps({"n": 2, "steps": 1000}).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 10
        while app.state.engine.stats.steps < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while app.state.engine.stats.outcomes["cancelled"] < 1:
        assert time.monotonic() < deadline, app.state.engine.stats
        time.sleep(0.05)
    assert app.state.engine.stats.steps < 1000


@pytest.fixture
def guarded(ddpm, monkeypatch):
    """ddpm-serve's own server (its protocol guards) on a free loopback port, in a thread."""
    from ddpm.serve import limits
    from ddpm.serve.server import Server

    monkeypatch.setattr(limits, "HEADER_SECONDS", 0.5)
    server = Server(ddpm, Settings(max_rows=4), "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.uvicorn.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield server.uvicorn.servers[0].sockets[0].getsockname()[1]
    server.uvicorn.should_exit = True
    thread.join(10)


def read_all(sock, seconds=5.0) -> bytes:
    sock.settimeout(seconds)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_slow_headers_are_cut_off(guarded):
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", guarded)) as sock:
        sock.sendall(b"POST /v1/samples HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
        assert read_all(sock) == b""  # closed by the server, unanswered
    assert time.monotonic() - began < 3
    with socket.create_connection(("127.0.0.1", guarded)) as sock:  # a fresh connection is served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock, 2).startswith(b"HTTP/1.1 200")


def test_huge_headers_and_streamed_bodies_are_refused_in_words(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431") and b"over 16384 bytes" in answer
    with socket.create_connection(("127.0.0.1", guarded)) as sock:
        sock.sendall(
            b"POST /v1/samples HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"%x\r\n%s\r\n" % (8192, b" " * 8192)
        for _ in range(8):  # 64 kB, past the 16 kB limit, still arriving when the answer is sent
            sock.sendall(chunk)
            time.sleep(0.01)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"over 16384 bytes" in answer


def start_server(tmp_path, *args, env=None):
    log = open(tmp_path / "serve.log", "w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ddpm.serve.cli import main; main()",
            "--port",
            "0",
            "--max-rows",
            "8",
            "--threads",
            "1",
            *args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 60
    while True:
        text = (tmp_path / "serve.log").read_text()
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", text)
        if found:
            return process, int(found.group(1))
        assert process.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.1)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sigterm_drains(tmp_path, precision):
    """The drain holds whichever file the engine runs. The precision is named rather than measured:
    timing every CPU path at one thread can outlast the start deadline on a slow CPU."""
    import httpx

    process, port = start_server(tmp_path, "--grace", "30", "--precision", precision)
    try:
        url = f"http://127.0.0.1:{port}"
        result = {}

        def long_request():
            result["response"] = httpx.post(f"{url}/v1/samples", json={"n": 2, "steps": 150, "seed": 1}, timeout=60)

        caller = threading.Thread(target=long_request)
        caller.start()
        time.sleep(0.8)
        process.send_signal(signal.SIGTERM)
        caller.join(60)
        assert result["response"].status_code == 200  # in flight at SIGTERM: finished
        assert process.wait(30) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
        text = (tmp_path / "serve.log").read_text()
        assert (
            "draining" in text and "stopped; 1 done, 0 failed, 0 cancelled requests" in text and "Traceback" not in text
        )
    finally:
        process.kill()


def test_refuses_an_open_address_without_a_token(invoke):
    result = invoke(serve_main, "--host", "0.0.0.0")
    assert_one_line_error(result, "--host 0.0.0.0", "--token", "--no-auth")
    assert_one_line_error(invoke(serve_main, "--token", "short"), "--token", "16 characters")
    assert_one_line_error(invoke(serve_main, "--token", TOKEN, "--no-auth"), "contradict")


def test_without_the_extra_one_line_names_it(invoke, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("ddpm.serve.") and name != "ddpm.serve.cli"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert_one_line_error(invoke(serve_main), 'pip install "ddpm-mnist[serve]"')


def test_layers_stay_web_free():
    """The base install (core, runtime) imports no web framework; the server imports no torch."""
    for layer, forbidden in (
        ("core", {"fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "ray"}),
        ("runtime", {"fastapi", "uvicorn", "starlette", "pydantic", "prometheus_client", "ray"}),
        ("serve", {"torch", "torchvision", "onnx"}),
    ):
        for path in pathlib.Path(layer).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                for name in names:
                    assert name.split(".")[0] not in forbidden or name.startswith("ddpm.serve"), (path, name)
        for path in pathlib.Path(layer).glob("*.py"):
            assert "ddpm.serve" not in path.read_text() or layer == "serve", path


def test_a_latent_model_is_served_like_any_other(latent_export):
    """Samples, jobs with live decoded frames and the result GIF, with no setting of its own."""
    latent = DDPM.load(latent_export / "unet.onnx", provider="cpu", threads=1)
    with TestClient(create_app(latent, Settings(max_rows=8))) as latent_client:
        got = npz(
            latent_client.post("/v1/samples", json={"n": 3, "digits": [2], "steps": 5, "seed": 6, "format": "npz"})
        )
        expected = latent.generate(3, latent.plan(digits=[2], steps=5), seed=6)
        assert got["images"].shape == (3, 32, 32)
        assert np.abs(got["images"].astype(int) - expected.images.astype(int)).max() <= 1
        job = latent_client.post("/v1/jobs", json={"n": 2, "steps": 4, "frames": 3, "show": "both"}).json()
        with latent_client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            text = "".join(stream.iter_text())
        frames = [
            json.loads(data) for name, data in re.findall(r"event: (\w+)\ndata: (.*)\n\n", text) if name == "frame"
        ]
        assert frames and "event: end" in text
        last = Image.open(io.BytesIO(base64.b64decode(frames[-1]["png"])))
        # x_t and x̂_0 of 2 decoded 32x32 digits side by side at one pixel per pixel (latents would be 16x16)
        assert last.size == make_grid(np.zeros((2, 32, 64), np.uint8), columns=2).shape[1::-1]
        gif = latent_client.get(f"/v1/jobs/{job['id']}/result", params={"format": "gif"})
        assert gif.status_code == 200 and gif.content[:6] == b"GIF89a"
