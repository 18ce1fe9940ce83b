"""ddpm-serve's surface as an attacker or a careless operator meets it: the Host a request names
(DNS rebinding), what a GIF may cost, connections at the cap, request framing, draining with
streams and keep-alive clients, signals, clients that stop reading, and the options that guard it."""

import asyncio
import json
import logging
import re
import signal
import socket
import threading
import time

import click
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
from conftest import assert_one_line_error  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_serve import read_all, start_server  # noqa: E402

from ddpm.runtime import DDPM  # noqa: E402
from ddpm.serve import jobs as jobs_module  # noqa: E402
from ddpm.serve import limits  # noqa: E402
from ddpm.serve import server as server_module
from ddpm.serve.app import Settings, create_app  # noqa: E402
from ddpm.serve.cli import main as serve_main  # noqa: E402
from ddpm.serve.server import Server  # noqa: E402

TOKEN = "t" * 24


@pytest.fixture(scope="module")
def ddpm():
    return DDPM.load(provider="cpu", threads=1)


def run_in_thread(server: Server):
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.uvicorn.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    return thread, server.uvicorn.servers[0].sockets[0].getsockname()[1]


@pytest.fixture
def own_server(ddpm):
    """ddpm-serve's server class on a free loopback port, in a thread; stopped after the test."""
    started = []

    def start(settings: Settings) -> int:
        server = Server(ddpm, settings, "127.0.0.1", 0, quiet=True)
        thread, port = run_in_thread(server)
        started.append((server, thread))
        return port

    yield start
    for server, thread in started:
        server.uvicorn.should_exit = True
        thread.join(10)


# -- DNS rebinding ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked_hosts(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=4, queue_rows=64, allowed_hosts=["digits.example"]))) as client:
        yield client


@pytest.mark.parametrize(
    "host, served",
    [
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("127.0.0.1", True),
        ("app.localhost:8000", True),
        ("digits.example:8000", True),
        ("DIGITS.example.", True),
        ("rebind.attacker.example", False),
        ("rebind.attacker.example:8000", False),
        ("localhost.attacker.example", False),
    ],
)
def test_only_requests_naming_this_server_are_served(checked_hosts, host, served):
    client = checked_hosts
    for method, path in (("GET", "/healthz"), ("GET", "/metrics"), ("POST", "/v1/jobs")):
        response = client.request(method, path, headers={"host": host}, json={"n": 1, "steps": 1})
        if served:
            assert response.status_code in (200, 202), (method, path, response.text)
        else:
            assert response.status_code == 400
            detail = response.json()["detail"]
            assert "\n" not in detail and "--allow-host" in detail and host.split(":")[0] in detail


def test_a_star_or_a_token_serves_any_host(ddpm):
    for settings in (Settings(max_rows=4, allowed_hosts=["*"]), Settings(max_rows=4)):
        with TestClient(create_app(ddpm, settings)) as client:
            assert client.get("/healthz", headers={"host": "rebind.attacker.example"}).status_code == 200


def test_the_command_checks_hosts_unless_a_token_guards_it(monkeypatch):
    from ddpm.serve.cli import serve_cli

    class Stop(Exception):
        pass

    seen = []

    def fake_server(ddpm, settings, *args, **kwargs):
        seen.append(settings.allowed_hosts)
        raise Stop

    monkeypatch.setattr(server_module, "Server", fake_server)
    monkeypatch.delenv("DDPM_SERVE_TOKEN", raising=False)
    cases = {
        (): [],
        ("--allow-host", "box.lan"): ["box.lan"],
        ("--token", TOKEN): None,
        ("--token", TOKEN, "--allow-host", "box.lan"): ["box.lan"],
    }
    for args in cases:
        with pytest.raises(Stop):
            serve_cli.main(
                ["--max-rows", "4", "--threads", "1", "--precision", "fp32", "-q", *args], standalone_mode=False
            )
    assert seen == list(cases.values())


# -- what a GIF may cost ---------------------------------------------------------------------------


def test_a_gif_fits_the_budget_by_scale_then_frames(monkeypatch):
    monkeypatch.setattr(jobs_module, "GIF_PIXELS", 200_000)
    frames = [np.full((64, 32, 64), index, np.uint8) for index in range(100)]  # 64 digits, both x_t and x̂_0
    kept, scale = jobs_module.gif_budget(frames, 8, None)
    height, width = 8 * 34 + 2, 8 * 66 + 2
    assert scale == 1 and len(kept) * height * width <= 200_000 < len(kept) * 2 * height * width
    assert kept[-1] is frames[-1]  # the finished digits always end the GIF
    small = [np.zeros((4, 32, 32), np.uint8)] * 4  # 4 frames of 70x70 at scale 3: 176,400 pixels
    assert jobs_module.gif_budget(small, 3, None) == (small, 3)  # within the budget: as asked


def test_a_gif_is_rendered_once_and_few_at_a_time(ddpm, monkeypatch):
    calls, running, most = [], [0], [0]
    real = jobs_module.gif_bytes
    lock = threading.Lock()

    def counted(*args, **kwargs):
        with lock:
            calls.append(1)
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(jobs_module, "gif_bytes", counted)
    with TestClient(create_app(ddpm, Settings(max_rows=16, queue_rows=64))) as client:
        ids = [
            client.post("/v1/jobs", json={"n": 1, "steps": 4, "frames": 4, "seed": k}).json()["id"] for k in range(4)
        ]
        for job_id in ids:
            while client.get(f"/v1/jobs/{job_id}").json()["state"] != "done":
                time.sleep(0.05)
        answers = []

        def fetch(job_id):
            answers.append(client.get(f"/v1/jobs/{job_id}/result?format=gif"))

        threads = [threading.Thread(target=fetch, args=(job_id,)) for job_id in ids * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len(calls) == 4  # one render per job, however many fetch it
    assert most[0] <= jobs_module.GIF_RENDERS
    assert len({answer.content for answer in answers}) == 4


# -- connections, framing, slow readers ------------------------------------------------------------


def test_half_sent_connections_cannot_crowd_out_whole_requests(own_server, monkeypatch):
    monkeypatch.setattr(server_module, "LIMIT_CONCURRENCY", 24)
    port = own_server(Settings(max_rows=4))
    crowd = []
    try:
        for _ in range(60):  # more than the cap, each sending half a request head and then nothing
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            crowd.append(sock)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = read_all(sock, 5)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    finally:
        for sock in crowd:
            sock.close()


def test_content_length_with_transfer_encoding_is_refused_and_closed(own_server):
    port = own_server(Settings(max_rows=4))
    body = b'{"n": 1, "steps": 1}'
    smuggled = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(body), body)
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(smuggled)
        answer = read_all(sock, 5)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"connection: close" in head.lower()
    assert json.loads(rest)["detail"] == "a request may not carry both Content-Length and Transfer-Encoding"
    assert answer.count(b"HTTP/1.1") == 1  # the pipelined request is not answered


def test_a_client_that_stops_reading_is_disconnected(monkeypatch):
    """The protocol's write deadline: paused writing (the client reads nothing) for WRITE_SECONDS aborts
    the connection and drops its buffer; resumed writing in time keeps it."""
    monkeypatch.setattr(limits, "WRITE_SECONDS", 0.05)

    class Transport(asyncio.Transport):
        aborted = closed = False

        def get_extra_info(self, name, default=None):
            return {"peername": ("127.0.0.1", 5), "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def abort(self):
            self.aborted = True

        def close(self):
            self.closed = True

        def is_closing(self):
            return self.aborted or self.closed

        def write(self, data):
            pass

    async def scenario():
        async def app(scope, receive, send):
            pass

        config = uvicorn.Config(app=app)
        state = uvicorn.server.ServerState()
        outcomes = []
        for resume in (False, True):
            protocol = limits.GuardedH11(config=config, server_state=state, app_state={})
            transport = Transport()
            protocol.connection_made(transport)
            protocol.pause_writing()
            if resume:
                protocol.resume_writing()
            await asyncio.sleep(0.2)
            outcomes.append(transport.aborted)
            protocol.connection_lost(None)
        return outcomes

    assert asyncio.run(scenario()) == [True, False]


def read_response(sock) -> bytes:
    """One whole response (head and Content-Length body) from a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


# -- draining and signals --------------------------------------------------------------------------


def test_a_drain_answers_everyone_within_the_grace(tmp_path):
    """SIGHUP drains like SIGTERM: the request in flight gets a JSON 503, the event stream its end
    event, a request on an idle keep-alive connection a 503 (not a reset), all within the grace and
    without a traceback; SIGUSR1 before it only logs a status line."""
    process, port = start_server(tmp_path, "--grace", "2", "--precision", "fp32")
    url = f"http://127.0.0.1:{port}"
    outcome = {}
    try:
        process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "ddpm-serve: serving;" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200

        def long_request():
            outcome["samples"] = httpx.post(f"{url}/v1/samples", json={"n": 1, "seed": 1}, timeout=30)

        def stream():
            job = httpx.post(f"{url}/v1/jobs", json={"n": 1, "seed": 2}, timeout=10).json()
            with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=30) as events:
                outcome["events"] = [line for line in events.iter_lines() if line.startswith("event:")]

        idle = socket.create_connection(("127.0.0.1", port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(idle).startswith(b"HTTP/1.1 200")  # and the connection stays open
        callers = [threading.Thread(target=long_request), threading.Thread(target=stream)]
        for caller in callers:
            caller.start()
        time.sleep(1.5)  # both under way: 1000 steps take longer than the grace
        began = time.monotonic()
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_all(idle, 5)
        idle.close()
        for caller in callers:
            caller.join(30)
        assert process.wait(30) == 0
        took = time.monotonic() - began
    finally:
        process.kill()
    assert answer.startswith(b"HTTP/1.1 503") and b'"detail"' in answer
    assert outcome["samples"].status_code == 503 and "shut down" in outcome["samples"].json()["detail"]
    assert outcome["samples"].headers["retry-after"]
    assert outcome["events"][-1] == "event: end"
    assert took < 2 + server_module.ANSWER_SECONDS + 1.5, took
    text = (tmp_path / "serve.log").read_text()
    assert "draining" in text and "Traceback" not in text and "CancelledError" not in text
    assert re.search(r"stopped; 0 done, 0 failed, 2 cancelled requests", text), text


# -- options that guard the server -----------------------------------------------------------------


def test_cors_origins_that_open_the_api_to_every_page_are_refused(invoke):
    assert_one_line_error(invoke(serve_main, "--cors-origin", "null"), "'null'", "sandboxed")
    assert_one_line_error(invoke(serve_main, "--cors-origin", "*"), "--token", "every web page")


def test_the_token_comes_from_a_file_or_the_environment(invoke, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert_one_line_error(invoke(serve_main, "--token-file", str(empty)), "--token-file", "no token")
    assert_one_line_error(invoke(serve_main, "--token-file", str(tmp_path / "missing")), "cannot read the token")
    good = tmp_path / "token"
    good.write_text(TOKEN + "\n")
    assert_one_line_error(invoke(serve_main, "--token-file", str(good), "--token", TOKEN), "contradict")
    from ddpm.serve.cli import chosen_token, serve_cli, warn_typed_token

    for source, warned in (
        (click.core.ParameterSource.COMMANDLINE, True),
        (click.core.ParameterSource.ENVIRONMENT, False),
    ):
        ctx = click.Context(serve_cli)
        ctx.set_parameter_source("token", source)
        assert chosen_token(ctx, TOKEN, None) == TOKEN
        warn_typed_token(ctx)
        assert ("visible to every user" in capsys.readouterr().err) == warned
    ctx = click.Context(serve_cli)
    ctx.set_parameter_source("token", click.core.ParameterSource.ENVIRONMENT)
    assert chosen_token(ctx, "from-the-environment", good) == TOKEN  # the file wins


def test_secrets_in_query_strings_stay_out_of_the_access_log():
    assert limits.redact_query("/v1/jobs/x?token=abc&format=gif") == "/v1/jobs/x?token=***&format=gif"
    assert limits.redact_query("/healthz?Access_Token=abc&api%5Fkey=s") == "/healthz?Access_Token=***&api%5Fkey=***"
    assert limits.redact_query("/v1/samples") == "/v1/samples"
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/metrics?token=secret", "1.1", 200),
        None,
    )
    limits.RedactSecrets().filter(record)
    assert "secret" not in record.getMessage() and "token=***" in record.getMessage()


def test_a_request_that_can_never_fit_the_queue_is_a_422(ddpm):
    with TestClient(create_app(ddpm, Settings(max_rows=4, queue_rows=8))) as client:
        response = client.post("/v1/samples", json={"n": 9, "steps": 1})
        assert response.status_code == 422 and "--queue-rows" in response.json()["detail"]
        assert "retry-after" not in response.headers
        assert client.post("/v1/samples", json={"n": 8, "steps": 1}).status_code == 200
