"""With upstream callbacks, a job is polled once, right after xAI says it finished; the callback
route lets in only the job's own, fresh token, naming the job's xAI request, at a bounded rate."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.e2e.helpers import job_record, wait_for_status, xai_request_id
from xjobs.notify import callback_token

from .conftest import FALLBACK_SECONDS

# Submits carry `callback_url`, which xAI's contract does not have (the simulator's extension).
pytestmark = pytest.mark.sends_invalid_requests


def test_callback_wakes_the_loop_for_a_single_status_call(api, stack, sim, inbox):
    sim.update(video_duration_median=4, video_duration_sigma=0.01)
    job_id = api.post("/v1/videos/generations", json={"prompt": "a comet"}).json()["id"]
    job = wait_for_status(api, job_id, timeout=FALLBACK_SECONDS - 5)
    noticed = time.time()

    assert job["status"] == "completed"
    request_id = xai_request_id(stack, job_id)
    assert sim.count(f"/v1/videos/{request_id}", method="GET") == 1
    assert noticed - sim.finish_at(request_id) < 3  # not the 30 s fallback
    assert len(inbox.for_job(job_id)) == 1


@pytest.fixture
def secrets(stack, api) -> dict[str, str]:
    read = stack.client("secretsmanager").get_secret_value
    callback = read(SecretId=stack.resources.physical["CallbackSigningSecret"])["SecretString"]
    return {"callback": callback, "webhook": api.get("/v1/webhook_secret").json()["secret"]}


@pytest.fixture
def slow_job(api, sim) -> str:
    sim.update(video_duration_median=60)
    job_id = api.post("/v1/videos/generations", json={"prompt": "a slow comet"}).json()["id"]
    wait_for_status(api, job_id, statuses={"processing"})
    return job_id


def test_the_callback_route_runs_on_its_own_function_with_reserved_concurrency(stack):
    route = next(r for r in stack.resources.apis["Api"].routes if r.path == "/v1/callbacks/xai/{id}")

    assert route.function == "CallbackFunction" and not route.api_key_required
    assert stack.resources.functions["CallbackFunction"].reserved_concurrency == 5
    assert route.throttle == (2.0, 5)  # the stack's CallbackThrottleRateLimit / BurstLimit


def test_a_callback_without_the_jobs_own_fresh_token_is_refused_and_wakes_nothing(
    api, stack, sim, secrets, slow_job
):
    other_job = api.post("/v1/videos/generations", json={"prompt": "another comet"}).json()["id"]
    callback = f"{stack.api_url}/v1/callbacks/xai/{slow_job}"
    later, earlier = int(time.time()) + 3600, int(time.time()) - 1
    forged = [
        {"token": "forged"},
        {},
        {"token": callback_token(secrets["callback"], other_job, later)},  # another job's
        {"token": callback_token(secrets["callback"], slow_job, earlier)},  # expired
        {"token": callback_token(secrets["webhook"], slow_job, later)},  # the tenant's webhook key
    ]

    for params in forged:
        assert httpx.post(callback, params=params).status_code == 404, params  # no API key needed, none given
    time.sleep(1)
    assert "news_at" not in job_record(stack, slow_job)
    assert sim.count(f"/v1/videos/{xai_request_id(stack, slow_job)}", method="GET") == 0


def test_a_callback_must_name_the_jobs_xai_request(api, stack, secrets, slow_job):
    token = callback_token(secrets["callback"], slow_job, int(time.time()) + 3600)
    callback = f"{stack.api_url}/v1/callbacks/xai/{slow_job}"

    assert (
        httpx.post(callback, params={"token": token}, json={"request_id": "someone-elses"}).status_code == 404
    )
    for unnamed in (None, {"status": "done"}, {"request_id": 7}):  # the route takes a burst of 5
        refused = httpx.post(callback, params={"token": token}, json=unnamed)
        assert refused.status_code == 400, unnamed
        assert refused.json()["error"]["param"] == "request_id"
    assert "news_at" not in job_record(stack, slow_job)
    time.sleep(1)
    named = {"request_id": xai_request_id(stack, slow_job), "status": "done"}
    assert httpx.post(callback, params={"token": token}, json=named).status_code == 202


def test_a_jobs_callbacks_are_rate_limited(stack, secrets, slow_job):
    token = callback_token(secrets["callback"], slow_job, int(time.time()) + 3600)
    callback = f"{stack.api_url}/v1/callbacks/xai/{slow_job}"
    named = {"request_id": xai_request_id(stack, slow_job), "status": "done"}

    first = httpx.post(callback, params={"token": token}, json=named)
    second = httpx.post(callback, params={"token": token}, json=named)

    assert first.status_code == 202
    assert second.status_code == 429 and second.json()["error"]["code"] == "too_many_callbacks"
    assert int(job_record(stack, slow_job)["callbacks"]) == 1


def test_a_flood_of_callbacks_is_throttled_at_the_route_and_stays_in_its_own_function(stack):
    callback = f"{stack.api_url}/v1/callbacks/xai/job_01FLOOD"
    api_calls = stack.runtime.stats["ApiFunction"].count
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(lambda _: httpx.post(callback, params={"token": "x"}).status_code, range(120)))

    assert codes.count(429) > 0  # the route's throttle: 40 at once, 20 a second
    assert set(codes) <= {404, 429, 502}
    assert stack.runtime.stats["CallbackFunction"].max_concurrency <= 5
    assert stack.runtime.stats["ApiFunction"].count == api_calls  # the API's executions were not touched
