"""ddpm-serve's OpenAPI document against what the server does: the error model of every status a route
sends, the result formats, the body's constraints, the event stream, Allow on a 405, one answer for
every unreadable body, and schemathesis generating requests from the document against a live server."""

import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
import uvicorn  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ddpm.core.samplers.base import SPACINGS  # noqa: E402
from ddpm.runtime import DDPM  # noqa: E402
from ddpm.serve.app import Settings, create_app  # noqa: E402
from ddpm.serve.jobs import MEDIA_TYPES  # noqa: E402

TOKEN = "t" * 24
PROBLEM = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


@pytest.fixture(scope="module")
def instant():
    """The embedded model with its network answering ε = 0: the engine, the samplers, the rendering
    and the HTTP layer run as they do, and a 1000-step request of 16 rows takes under a second."""
    ddpm = DDPM.load(provider="cpu", threads=1)
    ddpm.session.session.run = lambda names, feeds: [np.zeros_like(feeds["x"])]
    return ddpm


@pytest.fixture(scope="module")
def client(instant):
    with TestClient(create_app(instant, Settings(max_rows=4, queue_rows=4))) as client:
        yield client


@pytest.fixture(scope="module")
def doc(client):
    return client.get("/openapi.json").json()


def finished_job(client, **body) -> str:
    job = client.post("/v1/jobs", json={"n": 1, "steps": 3, **body}).json()
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job['id']}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return job["id"]


# -- the document says what the server sends ------------------------------------------------------

DECLARED_ERRORS = {
    ("get", "/healthz"): {500, 503},
    ("post", "/v1/samples"): {401, 408, 409, 413, 422, 429, 500, 503},
    ("post", "/v1/jobs"): {401, 408, 413, 422, 429, 500, 503},
    ("get", "/v1/jobs/{job_id}"): {401, 404, 422, 500},
    ("delete", "/v1/jobs/{job_id}"): {401, 404, 422, 500},
    ("get", "/v1/jobs/{job_id}/events"): {401, 404, 422, 500},
    ("get", "/v1/jobs/{job_id}/result"): {401, 404, 409, 422, 500, 503},
    ("get", "/metrics"): {401, 500},
}


def test_every_error_status_is_declared_as_one_line_of_json(doc):
    operations = {(method, path): op for path, ops in doc["paths"].items() for method, op in ops.items()}
    assert set(operations) == set(DECLARED_ERRORS)
    for key, op in operations.items():
        errors = {int(status) for status in op["responses"] if int(status) >= 400}
        assert errors == DECLARED_ERRORS[key], key
        for status in errors:
            assert op["responses"][str(status)]["content"] == PROBLEM, (key, status)
    assert doc["components"]["schemas"]["Problem"]["required"] == ["detail"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's list of errors, never sent


def test_retry_after_and_the_seed_are_declared(doc):
    for path in ("/v1/samples", "/v1/jobs"):
        for status in ("429", "503"):
            assert doc["paths"][path]["post"]["responses"][status]["headers"]["Retry-After"]["required"] is True
    for path, method in (("/v1/samples", "post"), ("/v1/jobs/{job_id}/result", "get")):
        ok = doc["paths"][path][method]["responses"]["200"]
        assert set(ok["content"]) == set(MEDIA_TYPES.values()) and ok["headers"]["X-DDPM-Seed"]["required"] is True


def test_errors_sent_are_the_ones_declared(instant, client, doc):
    """Each error a request can provoke in process has its status declared on its route, the
    declared headers, and the Problem body."""
    job = finished_job(client)
    cases = [
        (client, "post", "/v1/samples", {"content": b"{" + b" " * 20_000 + b"}"}, 413),
        (client, "post", "/v1/samples", {"json": {"n": 0}}, 422),
        (client, "post", "/v1/jobs", {"json": {"n": 3, "digits": [1]}}, 422),  # 6 rows: never fits the 4 admitted
        (client, "get", "/v1/jobs/{job_id}", {}, 404),
        (client, "delete", "/v1/jobs/{job_id}", {}, 404),
        (client, "get", "/v1/jobs/{job_id}/events", {}, 404),
        (client, "get", f"/v1/jobs/{job}/result", {"params": {"format": "gif"}}, 409),  # it kept no frames
        (client, "get", f"/v1/jobs/{job}/result", {"params": {"format": "tiff"}}, 422),
    ]
    with TestClient(create_app(instant, Settings(max_rows=4, token=TOKEN))) as guarded:
        cases += [(guarded, "post", "/v1/jobs", {"json": {"n": 1}}, 401), (guarded, "get", "/metrics", {}, 401)]
        for http, method, path, kwargs, status in cases:
            response = http.request(method.upper(), path.replace("{job_id}", "nope"), **kwargs)
            assert response.status_code == status, (path, response.text)
            assert response.headers["content-type"] == "application/json"
            assert set(response.json()) == {"detail"} and "\n" not in response.json()["detail"]
            template = path.replace(job, "{job_id}")
            declared = doc["paths"][template][method]["responses"][str(status)]
            for header in declared.get("headers", {}):
                assert header.lower() in response.headers, (path, status, header)


def test_the_result_format_is_one_of_the_media_types(client, doc):
    parameter = next(p for p in doc["paths"]["/v1/jobs/{job_id}/result"]["get"]["parameters"] if p["name"] == "format")
    assert parameter["schema"]["anyOf"][0]["enum"] == list(MEDIA_TYPES)
    job = finished_job(client, frames=2)
    for kind, media_type in MEDIA_TYPES.items():
        response = client.get(f"/v1/jobs/{job}/result", params={"format": kind})
        assert response.status_code == 200 and response.headers["content-type"] == media_type
    refused = client.get(f"/v1/jobs/{job}/result", params={"format": "tiff"})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("format: ")


def test_the_body_schema_refuses_what_the_server_refuses(client, doc):
    """Empty digits and an empty spacing are outside the schema and refused; every spacing the schema
    lists is taken."""
    body = doc["components"]["schemas"]["SampleBody"]["properties"]
    digits = next(branch for branch in body["digits"]["anyOf"] if branch.get("type") == "array")
    assert digits["minItems"] == 1
    assert body["spacing"]["enum"] == [*SPACINGS, None] and "" not in body["spacing"]["enum"]
    for refused in ({"n": 1, "digits": []}, {"n": 1, "sampler": "ddim", "spacing": ""}):
        response = client.post("/v1/samples", json={**refused, "steps": 2})
        assert response.status_code == 422, refused
    for spacing in SPACINGS:
        response = client.post("/v1/samples", json={"n": 1, "sampler": "ddim", "spacing": spacing, "steps": 2})
        assert response.status_code == 200, (spacing, response.text)


def test_events_are_declared_and_sent_as_an_event_stream(client, doc):
    assert set(doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]) == {"text/event-stream"}
    job = finished_job(client)
    with client.stream("GET", f"/v1/jobs/{job}/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize(
    "path", ["/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/jobs", "/v1/samples", "/healthz"]
)
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_allow_lists_every_method_of_the_path(client, doc, path, method):
    response = client.request(method, path.replace("{job_id}", "nope"))
    assert response.status_code == 405 and set(response.json()) == {"detail"}
    allowed = {name.strip() for name in response.headers["allow"].split(",")}
    assert allowed - {"HEAD"} == {name.upper() for name in doc["paths"][path]}


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"n": 1, "seed": 1', "Expecting"),  # cut short
        (b'{"n": 1, "sampler": "\xff"}', "not UTF-8"),
        (b'\xff\xfe{\x00"\x00n\x00"\x00:\x001\x00}\x00', "not UTF-8"),  # UTF-16 is not JSON between systems
        (b'{"n": 1, "digits": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
        (b'{"n": 1, "seed": ' + b"9" * 5000 + b"}", "too many digits"),
    ],
)
def test_an_unreadable_body_is_one_status_and_one_wording(client, content, why):
    for path in ("/v1/samples", "/v1/jobs"):
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith("body: not valid JSON (") and why in detail and "\n" not in detail


# -- schemathesis: requests generated from the document, against a live server ---------------------

EXAMPLES = 20  # per operation and generation mode: each route's main answers, in seconds on the instant model


@pytest.fixture(scope="module")
def live(instant):
    """The app under uvicorn on a free loopback port; 16 rows admitted, so that larger requests are
    answered 429 at once and the rest finish quickly on the instant model."""
    app = create_app(instant, Settings(max_rows=8, queue_rows=16))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=30)


def _conformance_checks():
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        response_headers_conformance,
    ]


def test_schemathesis_finds_the_server_as_documented(live):
    """Requests generated from the document, valid ones and (where a body or query can be invalid)
    invalid ones: each answer's status is declared, its content type, body and headers are as
    declared, and none is a server error. Bounded by the examples, a timeout per request and a
    budget for the whole run (a few seconds here)."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the test extra) is not installed")
    from hypothesis import HealthCheck, Phase, given, settings

    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    checks = _conformance_checks()
    began = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        raw = operation.definition.raw  # a job id is any string: only bodies and queries can be made invalid
        negatable = "requestBody" in raw or any(parameter["in"] == "query" for parameter in raw.get("parameters", ()))
        modes = list(schemathesis.GenerationMode) if negatable else [schemathesis.GenerationMode.POSITIVE]
        for mode in modes:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode))
            def conforms(case):
                case.call_and_validate(checks=checks, timeout=20)

            conforms()
    assert time.monotonic() - began < 60


def test_a_finished_job_is_answered_as_documented(live):
    """The job routes with an id that exists (generated ids name none): status, events, each result
    format and the cancel, validated against the document."""
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the test extra) is not installed")
    schema = schemathesis.openapi.from_url(f"{live}/openapi.json")
    checks = _conformance_checks()
    submitted = schema["/v1/jobs"]["POST"].Case(
        body={"n": 2, "digits": [4], "steps": 3, "frames": 2}, media_type="application/json"
    )
    job = submitted.call_and_validate(checks=checks).json()["id"]
    status = schema["/v1/jobs/{job_id}"]["GET"].Case(path_parameters={"job_id": job})
    events = schema["/v1/jobs/{job_id}/events"]["GET"].Case(path_parameters={"job_id": job})
    assert "event: end" in events.call_and_validate(checks=checks).text  # the stream ends with the job
    assert status.call_and_validate(checks=checks).json()["state"] == "done"
    for kind in MEDIA_TYPES:
        result = schema["/v1/jobs/{job_id}/result"]["GET"].Case(path_parameters={"job_id": job}, query={"format": kind})
        assert result.call_and_validate(checks=checks).status_code == 200
    schema["/v1/jobs/{job_id}"]["DELETE"].Case(path_parameters={"job_id": job}).call_and_validate(checks=checks)
