"""With upstream callbacks, a job is polled once, right after xAI says it finished."""

import time

import httpx

from tests.e2e.helpers import job_record, wait_for_status, xai_request_id

from .conftest import FALLBACK_SECONDS


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


def test_a_callback_without_the_jobs_token_is_refused_and_wakes_nothing(api, stack, sim):
    sim.update(video_duration_median=60)
    job_id = api.post("/v1/videos/generations", json={"prompt": "a slow comet"}).json()["id"]
    wait_for_status(api, job_id, statuses={"processing"})
    callback = f"{stack.api_url}/v1/callbacks/xai/{job_id}"

    for params in ({"token": "forged"}, {}):
        assert httpx.post(callback, params=params).status_code == 404  # no API key needed, and none given
    time.sleep(1)
    assert "news_at" not in job_record(stack, job_id)
    assert sim.count(f"/v1/videos/{xai_request_id(stack, job_id)}", method="GET") == 0
