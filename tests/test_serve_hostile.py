"""ddpm-serve against hostile clients: a real server on loopback (``ddpm-serve`` in a subprocess, with
a token), a background of normal requests beside every case. Numbers and JSON the schema must refuse,
bodies of many megabytes (declared, chunked, with ``Expect: 100-continue``), slow headers and slow
bodies, connections opened and dropped by the hundred. Each case ends within its bound with a 4xx, or
a close for slow and dropped connections, never a 5xx; the background loses no answer, and
/healthz answers throughout.

Short by default (seconds a case, 20 MB bodies, 5 slow clients, 50 drops). ``DDPM_HOSTILE_LONG=1``
runs the long version (100 MB bodies, 50 slow-loris clients, 500 drops, cases repeated for seconds,
two background callers) and prints how much each case slowed the background:
``DDPM_HOSTILE_LONG=1 python -m pytest tests/test_serve_hostile.py -s`` (or
``python -m ddpm.benchmarks.serve_load hostile``).

Not repeated here, since tests/test_serve.py covers them: malformed and non-JSON bodies, ``n`` as a
string, a JSON array, unknown fields, a huge seed, NaN guidance, ``n`` = 65, 1,000 digits
(test_malformed_bodies_get_one_line), a huge header (test_huge_headers_and_streamed_bodies_are_refused_in_words),
missing, wrong and mis-schemed tokens and /metrics without one (test_tokens), a bad body without a
token (test_the_token_comes_before_the_body); nor half-sent connections at the cap, which
tests/test_serve_surface.py covers (test_half_sent_connections_cannot_crowd_out_whole_requests)."""

import contextlib
import itertools
import json
import os
import resource
import select
import socket
import struct
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import httpx  # noqa: E402
from test_serve import start_server  # noqa: E402

from ddpm.serve import limits  # noqa: E402

LONG = os.environ.get("DDPM_HOSTILE_LONG", "") not in ("", "0")
TOKEN = "h" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANSWER_BOUND = 2.0  # seconds an error answer may take
REPEAT_SECONDS = 3.0 if LONG else 0.0  # how long each body case is repeated (0: once)
BIG_BYTES = (100 if LONG else 20) * 1_000_000
SLOW_HEADERS, SLOW_BODIES = (50, 5) if LONG else (5, 2)
DROPS = 500 if LONG else 50
RESET = "reset by the server"
NORMAL = {"n": 1, "sampler": "dpm++2m-sde", "steps": 10}  # one row a call


class Background:
    """Normal requests from ``callers`` threads, one after another, each outcome with its times."""

    def __init__(self, base: str, callers: int) -> None:
        self.base, self.outcomes, self.cases = base, [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.call, daemon=True) for _ in range(callers)]
        for thread in self.threads:
            thread.start()

    def call(self) -> None:
        with httpx.Client(headers=AUTH, timeout=60, trust_env=False) as client:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    status = client.post(f"{self.base}/v1/samples", json=NORMAL).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.outcomes.append((start, time.perf_counter(), status))

    def failures(self) -> list:
        """Outcomes other than a digit or a refusal to come back later (the drops may fill the queue)."""
        return [outcome for outcome in self.outcomes if outcome[2] not in (200, 429)]

    def latencies(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [b - a for a, b, status in self.outcomes if status == 200 and a <= end and b >= start]

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # the drops hold hundreds of sockets at once
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * DROPS + 256)), hard))
    folder = tmp_path_factory.mktemp("hostile")
    process, port = start_server(folder, "--precision", "fp32", env={"DDPM_SERVE_TOKEN": TOKEN})
    base = f"http://127.0.0.1:{port}"
    load = Background(base, 2 if LONG else 1)
    while len(load.latencies()) < 3:  # the background's pace before any case
        assert process.poll() is None and not load.failures(), load.failures()
        time.sleep(0.1)
    first_case = time.perf_counter()
    yield port, load
    load.close()
    process.terminate()
    assert process.wait(30) == 0
    log = (folder / "serve.log").read_text()
    assert "Traceback" not in log, log[log.find("Traceback") :][:2000]
    if LONG:
        before = load.latencies(end=first_case)
        print(
            f"\nbackground: {len(before)} requests before the cases, p50 {np.median(before):.3f} s, p99 "
            f"{np.percentile(before, 99):.3f} s; during each case (n, p50, p99, slowed by at p50 and p99):"
        )
        for name, start, end in load.cases:
            during = load.latencies(start, end)
            if during:
                p50, p99 = np.median(during), np.percentile(during, 99)
                print(
                    f"  {name}: {len(during)}, {p50:.3f} s, {p99:.3f} s, {p50 / np.median(before):.2f}x, "
                    f"{p99 / np.percentile(before, 99):.2f}x"
                )


@contextlib.contextmanager
def case(served, name: str):
    """A case beside the background: it must lose no answer, and /healthz must answer 200 promptly after."""
    port, load = served
    start = time.perf_counter()
    yield port
    load.cases.append((name, start, time.perf_counter()))
    began = time.perf_counter()
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=ANSWER_BOUND + 3, trust_env=False).status_code == 200
    assert time.perf_counter() - began <= ANSWER_BOUND
    assert not load.failures(), load.failures()


def status_of(line: bytes) -> int | None:
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def request_head(headers: dict[str, str]) -> bytes:
    lines = [
        "POST /v1/samples HTTP/1.1",
        "Host: 127.0.0.1",
        *(f"{k}: {v}" for k, v in {**AUTH, **headers}.items()),
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", {422}),
        (b'{"n": 1, "digits": "7"}', {422}),
        (b'{"n": 1e30}', {422}),
        (b'{"n": 1' + b"0" * 30 + b"}", {422}),
        (b'{"n": 1, "steps": 1' + b"0" * 30 + b"}", {422}),
        (b'{"n": 1, "digits": [1], "guidance": 1e999}', {422}),
        (b'{"n": 1, "digits": ' + b"[" * 5000 + b"]" * 5000 + b"}", {400, 422}),
        (b'{"n": 1, "sampler": "\xff\xfe"}', {400, 422}),
    ],
    ids=[
        "empty",
        "digits-as-a-string",
        "n-1e30",
        "n-10e30",
        "steps-10e30",
        "guidance-inf",
        "nested-5000-deep",
        "bad-utf8",
    ],
)
def test_bodies_the_schema_refuses_get_a_prompt_one_line_4xx(served, request, content, expected):
    with case(served, request.node.name) as port, httpx.Client(headers=AUTH, trust_env=False, timeout=30) as client:
        stop_at = time.monotonic() + REPEAT_SECONDS
        while True:
            start = time.perf_counter()
            response = client.post(
                f"http://127.0.0.1:{port}/v1/samples", content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code in expected and time.perf_counter() - start <= ANSWER_BOUND, response.text
            assert "\n" not in response.json()["detail"]
            if time.monotonic() >= stop_at:
                break


def send_big_body(port: int, total: int, chunked: bool, expect: bool) -> tuple:
    """Stream ``total`` bytes of body as fast as the socket takes them, stopping at the first byte of
    an answer. The status (or RESET: a server that closes with unread data makes the kernel drop its
    own answer), the seconds to it, the bytes handed to the socket before it."""
    headers = {
        "Content-Type": "application/json",
        **({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(total)}),
        **({"Expect": "100-continue"} if expect else {}),
    }
    sent, piece, start = 0, b" " * 65536, time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_BOUND + 3) as sock:
        try:
            sock.sendall(request_head(headers))
            if expect and select.select([sock], [], [], 1.0)[0]:  # curl's way: a second for the server's word
                first = sock.recv(65536)
                if not first.startswith(b"HTTP/1.1 100"):
                    return status_of(first), time.perf_counter() - start, 0
            while sent < total and not select.select([sock], [], [], 0)[0]:
                chunk = piece[: total - sent]
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                sent += len(chunk)
        except OSError:  # the server closed its side, or stopped reading
            pass
        try:
            status = status_of(sock.recv(65536)) or "closed without an answer"
        except ConnectionResetError:
            status = RESET
        except OSError as exc:
            status = f"no answer ({type(exc).__name__})"
    return status, time.perf_counter() - start, sent


@pytest.mark.parametrize(
    "chunked, expect",
    [(False, False), (True, False), (False, True)],
    ids=["content-length", "chunked", "expect-100-continue"],
)
def test_a_body_of_many_megabytes_is_refused_early(served, request, chunked, expect):
    with case(served, f"{request.node.name}, {BIG_BYTES // 1_000_000} MB") as port:
        status, seconds, sent = send_big_body(port, BIG_BYTES, chunked, expect)
    assert status in ({413} if expect else {413, RESET}) and seconds <= ANSWER_BOUND, (status, seconds, sent)
    assert sent == 0 if expect else sent < BIG_BYTES  # asked first, nothing sent; else the server stopped taking it


def trickle(port: int, heads: list[bytes], feeds: list, seconds: float) -> tuple[list, tuple]:
    """Connections that send ``heads`` then a byte a second of their ``feeds``: each one's end (a status,
    "closed by the server" or "open at the end") and the seconds to it; and /healthz's status and time
    while they hang on, halfway to the server's header deadline."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in heads]
    ends, start, probe = [None] * len(socks), time.monotonic(), None
    for sock, head in zip(socks, heads, strict=True):
        sock.sendall(head)
    while time.monotonic() - start < seconds and None in ends:
        for index, sock in enumerate(socks):
            if ends[index] is None:
                try:
                    sock.send(bytes([next(feeds[index])]))
                except OSError:
                    ends[index] = ("closed by the server", time.monotonic() - start)
        readable, _, _ = select.select([s for s, end in zip(socks, ends, strict=True) if end is None], [], [], 1.0)
        for sock in readable:
            try:
                answer = sock.recv(65536)
            except OSError:
                answer = b""
            ends[socks.index(sock)] = (status_of(answer) or "closed by the server", time.monotonic() - start)
        if probe is None and time.monotonic() - start >= min(seconds, limits.HEADER_SECONDS) / 2:
            began = time.perf_counter()
            probe = (
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=ANSWER_BOUND + 3, trust_env=False).status_code,
                time.perf_counter() - began,
            )
    for sock in socks:
        sock.close()
    return [end or ("open at the end", None) for end in ends], probe


def test_slow_headers_are_closed_and_slow_bodies_answered_408_at_their_deadlines(served):
    slow_head = b"POST /v1/samples HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    heads = [b""] * SLOW_HEADERS + [
        request_head({"Content-Type": "application/json", "Content-Length": "64"})
    ] * SLOW_BODIES
    feeds = [itertools.chain(slow_head, itertools.repeat(ord("a"))) for _ in range(SLOW_HEADERS)] + [
        itertools.cycle(b'{"n": 1}' + b" " * 56) for _ in range(SLOW_BODIES)
    ]
    seconds = max(limits.HEADER_SECONDS, limits.BODY_SECONDS) + ANSWER_BOUND + 2
    with case(served, f"{SLOW_HEADERS} slow-loris headers and {SLOW_BODIES} slow bodies, a byte a second") as port:
        ends, probe = trickle(port, heads, feeds, 3 * seconds if LONG else seconds)
    assert probe is not None and probe[0] == 200 and probe[1] <= ANSWER_BOUND, probe
    expected = [(("closed by the server", 400, 408, 431), limits.HEADER_SECONDS)] * SLOW_HEADERS + [
        ((408,), limits.BODY_SECONDS)
    ] * SLOW_BODIES
    for end, (allowed, bound) in zip(ends, expected, strict=True):
        assert end[0] in allowed and end[1] <= bound + ANSWER_BOUND, ends


@pytest.mark.parametrize("with_request", [False, True], ids=["bare", "after-a-sampling-request"])
def test_connections_dropped_by_the_hundred_leave_the_server_whole(served, request, with_request):
    body = json.dumps({"n": 1, "sampler": "dpm++2m-sde", "steps": 20, "digits": [1]}).encode()
    sample = request_head({"Content-Type": "application/json", "Content-Length": str(len(body))}) + body
    with case(served, f"{request.node.name}, {DROPS} connections") as port:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(DROPS)]
        for sock in socks:
            if with_request:
                sock.sendall(sample)
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a close
            sock.close()
        deadline = time.monotonic() + 20
        with httpx.Client(headers=AUTH, trust_env=False, timeout=10) as client:
            while True:  # the server takes the rows of the dropped requests back: the background's own remain
                found = [
                    line
                    for line in client.get(f"http://127.0.0.1:{port}/metrics").text.splitlines()
                    if line.startswith("ddpm_active_rows ")
                ]
                if float(found[0].split()[1]) <= len(served[1].threads) or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
    assert float(found[0].split()[1]) <= len(served[1].threads), found
