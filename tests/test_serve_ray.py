"""ddpm-serve --ray on a real local Ray cluster: two sampler replicas both serve, and a replica killed
under load takes only its own requests (a clean 503 each) while Ray starts a replacement."""

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed")
httpx = pytest.importorskip("httpx")

STARTUP = 180  # seconds: a cold Ray cluster and two replicas on a 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("ray") / "serve.log"
    port = free_port()
    log = open(log_path, "w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ddpm.serve.cli import main; main()",
            "--ray",
            "--replicas",
            "2",
            "--replica-cpus",
            "1",
            "--threads",
            "1",
            # fp32 by name: auto would time every CPU path in each replica first, a minute of start-up here
            "--precision",
            "fp32",
            "--max-rows",
            "8",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        start_new_session=True,
    )
    deadline = time.monotonic() + STARTUP
    while "running on http" not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"ddpm-serve --ray did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", log_path
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(90) == 0, log_path.read_text()[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None


def sample(url: str, steps: int, seed: int) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/samples",
        json={"n": 1, "digits": [seed % 10], "steps": steps, "seed": seed, "sampler": "ddim"},
        timeout=120,
    )


def sampler_pids() -> list[int]:
    """Processes of the sampler replicas (Ray names each worker after its actor)."""
    found = subprocess.run(["pgrep", "-f", "ServeReplica:ddpm:SamplerReplica"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def test_both_replicas_serve(cluster):
    url, _ = cluster
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda seed: sample(url, 60, seed), range(16)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    assert len({r.headers["x-ddpm-replica"] for r in responses}) == 2
    job = httpx.post(f"{url}/v1/jobs", json={"n": 2, "steps": 5, "frames": 2}).json()  # a job, whatever replica has it
    with httpx.stream("GET", f"{url}/v1/jobs/{job['id']}/events", timeout=60) as events:
        text = "".join(events.iter_text())
    assert text.count("event: frame") >= 2 and '"state": "done"' in text.split("event: end")[-1]


def test_a_killed_replica_loses_only_its_own_requests(cluster):
    url, log_path = cluster
    pids = sampler_pids()
    assert len(pids) == 2, pids
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(sample, url, 400, seed) for seed in range(12)]
        time.sleep(2.5)  # every request admitted and under way on one replica or the other
        os.kill(pids[0], signal.SIGKILL)
        responses = [future.result() for future in futures]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, [(r.status_code, r.text) for r in responses]
    lost = [r.json()["detail"] for r in responses if r.status_code == 503]
    assert lost and len(lost) < len(responses)  # it held some requests, not all of them
    killed = {re.search(r"stopped \(([^)]+)\)", detail).group(1) for detail in lost}
    assert len(killed) == 1
    served = {r.headers["x-ddpm-replica"] for r in responses if r.status_code == 200}
    assert not served & killed  # no request of the other replica was lost
    # Ray starts a replacement: a third replica id appears among new requests.
    deadline, seen = time.monotonic() + 120, set()
    while not seen - served - killed:
        assert time.monotonic() < deadline, f"no replacement replica; saw {seen}\n{log_path.read_text()[-2000:]}"
        response = sample(url, 5, 0)
        if response.status_code == 200:
            seen.add(response.headers["x-ddpm-replica"])
        time.sleep(0.2)
    assert httpx.get(f"{url}/healthz").status_code == 200
