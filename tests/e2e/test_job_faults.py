"""xAI misbehaving during submit or poll: the job still reaches the right terminal status."""

import time

import pytest

from .helpers import wait_for_status, xai_request_id

VIDEO = {"prompt": "rain on a tin roof", "duration": 3}


def test_429s_on_submit_are_retried_until_the_job_completes(api, sim):
    sim.inject("/v1/videos/generations", 429, 429)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    assert [c.status for c in sim.calls if c.path == "/v1/videos/generations"] == [429, 429, 200]


@pytest.mark.parametrize("fault", [500, 503, "hang", "reset"])
def test_a_submit_xai_may_have_accepted_is_not_sent_twice_and_the_job_says_so(api, sim, fault):
    sim.update(hang_seconds=20)  # longer than the client's 15-s timeout
    sim.inject("/v1/videos/generations", fault)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "submit_outcome_unknown"
    assert "not paid twice" in job["error"]["message"]
    if fault == "hang":
        time.sleep(6)  # the simulator logs a hung call when its hang ends
    assert sim.count("/v1/videos/generations") == 1


@pytest.mark.parametrize("outcomes", [(500, 503, 500), (429,), ("hang", 503)])
def test_status_faults_are_retried_until_the_job_completes(api, stack, sim, outcomes):
    sim.update(hang_seconds=2, video_duration_median=4, video_duration_sigma=0.01)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    wait_for_status(api, job_id, statuses={"processing"})
    request_id = xai_request_id(stack, job_id)
    sim.inject(f"/v1/videos/{request_id}", *outcomes)
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    statuses = [c.status for c in sim.calls if c.path == f"/v1/videos/{request_id}"]
    assert statuses[-1] == 200 and len(statuses) > len(outcomes)


def test_deferred_chat_survives_rate_limits_and_errors(api, sim):
    sim.inject("/v1/chat/completions", 429, 429)
    sim.inject("/v1/chat/deferred-completion/", 500, 429)
    body = {"model": "grok-4", "deferred": True, "messages": [{"role": "user", "content": "still there?"}]}
    job = wait_for_status(api, api.post("/v1/chat/completions", json=body).json()["id"], timeout=90)
    assert job["status"] == "completed", job
    assert job["result"]["choices"][0]["message"]["content"] == "echo: still there?"


def test_a_crashing_poll_step_fails_the_job_with_the_reason(api, stack, inbox):
    # The local runtime can make the next invocation of a function crash, as a bug would.
    stack.runtime.fail_next["PollFunction"] = ["simulated crash in the poll step"]
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "RuntimeError", "message": "simulated crash in the poll step"}
    assert inbox.for_job(job_id)[0]["attributes"]["status"] == "failed"
