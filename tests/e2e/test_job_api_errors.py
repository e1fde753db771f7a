"""Bad input gets a clear error naming what is wrong; tenants see only their own jobs."""

import httpx
import pytest

from .helpers import wait_for_status

VIDEO = {"prompt": "a paper boat on a river"}


@pytest.mark.parametrize(
    ("path", "body", "names"),
    [
        ("/v1/videos/generations", "{not json", "not valid JSON"),
        ("/v1/videos/generations", "[1, 2]", "JSON object"),
        ("/v1/videos/generations", "", "empty"),
        ("/v1/videos/generations", '{"duration": 5}', "'prompt'"),
        ("/v1/videos/generations", '{"prompt": "x", "colour": "red"}', "'colour': unknown field"),
        ("/v1/videos/generations", '{"prompt": "' + "x" * 5000 + '"}', "'prompt'"),
        ("/v1/videos/generations", '{"prompt": "x", "duration": "long"}', "'duration'"),
        ("/v1/videos/generations", '{"prompt": "x", "duration": 99}', "'duration'"),
        ("/v1/videos/generations", '{"prompt": "x", "resolution": "4k"}', "'resolution'"),
        ("/v1/videos/generations", '{"prompt": "x", "timeout_seconds": 100000}', "'timeout_seconds'"),
        ("/v1/videos/generations", '{"prompt": "x", "webhook_url": "ftp://h/x"}', "'webhook_url'"),
        ("/v1/videos/edits", '{"prompt": "x"}', "'video'"),
        (
            "/v1/chat/completions",
            '{"model": "grok-4", "messages": [{"role": "user", "content": "hi"}]}',
            "'deferred'",
        ),
        (
            "/v1/chat/completions",
            '{"model": "grok-4", "deferred": false, "messages": [{"role": "user", "content": "hi"}]}',
            "'deferred'",
        ),
        ("/v1/chat/completions", '{"model": "grok-4", "deferred": true, "messages": []}', "'messages'"),
    ],
)
def test_bad_body_is_a_400_naming_the_problem(api, path, body, names):
    reply = api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert names in reply.json()["error"]["message"]
    assert reply.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://167772161/hook",  # 10.0.0.1 as one number
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://intranet/hook",
    ],
)
def test_a_webhook_url_that_could_reach_inside_is_a_400_naming_webhook_url(api, url):
    # Refused from the URL alone: the addresses are read, never connected to (nor looked up).
    reply = api.post("/v1/videos/generations", json={**VIDEO, "webhook_url": url})

    assert reply.status_code == 400, reply.text
    message = reply.json()["error"]["message"]
    assert "'webhook_url'" in message
    assert "public addresses only" in message or "internal host" in message


def test_bad_body_creates_no_job(new_tenant):
    client = new_tenant()
    client.post("/v1/videos/generations", json={"duration": 5})
    assert client.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-api-key": "not-a-key"},
        {"Authorization": "Bearer xj-not-a-key"},
        {"Authorization": "Basic eDp5"},
    ],
)
def test_missing_or_wrong_api_key_is_a_401_in_openais_shape(stack, headers):
    for method, path in [("POST", "/v1/videos/generations"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/job_x")]:
        reply = httpx.request(method, stack.api_url + path, headers=headers, json=VIDEO)
        assert reply.status_code == 401, (method, path)
        assert reply.json()["error"]["code"] == "invalid_api_key"
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/nothing"), ("POST", "/v1/jobs"), ("GET", "/v2/jobs")]
)
def test_an_unknown_route_is_a_404_with_or_without_a_key(stack, method, path):
    for headers in ({}, {"Authorization": f"Bearer {stack.api_key}"}):
        reply = httpx.request(method, stack.api_url + path, headers=headers)
        assert reply.status_code == 404, (method, path, reply.text)
        assert reply.json()["error"]["code"] == "unknown_url"


def test_unknown_job_is_404(api):
    for reply in (api.get("/v1/jobs/job_01UNKNOWN"), api.post("/v1/jobs/job_01UNKNOWN/cancel")):
        assert reply.status_code == 404
        assert "job_01UNKNOWN" in reply.json()["error"]["message"]


def test_another_tenants_job_is_404(api, new_tenant):
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    other = new_tenant()
    assert other.get(f"/v1/jobs/{job_id}").status_code == 404
    assert other.get(f"/v1/videos/{job_id}").status_code == 404
    assert other.post(f"/v1/jobs/{job_id}/cancel").status_code == 404
    assert job_id not in [j["id"] for j in other.get("/v1/jobs").json()["data"]]
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200  # untouched by the other tenant's cancel
    assert wait_for_status(api, job_id)["status"] == "completed"


def test_list_is_newest_first_paginated_and_filtered(new_tenant):
    client = new_tenant()
    ids = [client.post("/v1/videos/generations", json=VIDEO).json()["id"] for _ in range(3)]
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == [ids[2], ids[1]]
    assert first["has_more"] is True and first["last_id"] == ids[1]
    second = client.get("/v1/jobs", params={"limit": 2, "after": first["last_id"]}).json()
    assert [j["id"] for j in second["data"]] == [ids[0]]
    assert second["has_more"] is False
    for job_id in ids:
        wait_for_status(client, job_id)
    client.post("/v1/jobs/" + ids[0] + "/cancel")  # already completed: stays completed
    completed = client.get("/v1/jobs", params={"status": "completed"}).json()["data"]
    assert sorted(j["id"] for j in completed) == sorted(ids)
    assert client.get("/v1/jobs", params={"status": "failed"}).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "names"),
    [({"limit": "0"}, "'limit'"), ({"limit": "x"}, "'limit'"), ({"status": "done"}, "'status'")],
)
def test_bad_list_parameters_are_400(api, params, names):
    reply = api.get("/v1/jobs", params=params)
    assert reply.status_code == 400
    assert names in reply.json()["error"]["message"]


def test_without_callback_base_url_there_is_no_callback_route(stack):
    # The template's condition leaves out the route, its function and its secret.
    # (The scheduled sweeper may run meanwhile: only the functions a request could reach are compared.)
    reachable = ("ApiFunction", "AuthorizerFunction")
    calls = {lid: stack.runtime.stats[lid].count for lid in reachable}
    reply = httpx.post(f"{stack.api_url}/v1/callbacks/xai/job_01ANY", params={"token": "x"})

    assert reply.status_code == 404  # API Gateway's answer to a route it does not have
    assert {lid: stack.runtime.stats[lid].count for lid in reachable} == calls
    assert "CallbackFunction" not in stack.resources.functions
    assert "CallbackSigningSecret" not in stack.resources.physical
