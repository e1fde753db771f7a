"""xAI misbehaving during submit or poll: the job still reaches the right terminal status."""

import pytest

from .helpers import wait_for_status, xai_request_id

VIDEO = {"prompt": "rain on a tin roof", "duration": 3}


@pytest.mark.parametrize("outcomes", [(500, 503), (429, 429), ("hang",), ("reset", 503)])
def test_submit_faults_are_retried_until_the_job_completes(api, sim, outcomes):
    sim.update(hang_seconds=2)
    sim.inject("/v1/videos/generations", *outcomes)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    assert sim.count("/v1/videos/generations", status=200) >= 1


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
    sim.inject("/v1/chat/completions", 429, 503)
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


@pytest.mark.parametrize("body_rate", [0.0, 1.0], ids=["empty-202s", "202s-with-a-body"])
def test_a_video_pending_behind_202s_with_or_without_a_body_completes(api, stack, sim, body_rate):
    sim.update(video_pending_body_rate=body_rate, video_duration_median=3, video_duration_sigma=0.01)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    statuses = [c.status for c in sim.calls if c.path == f"/v1/videos/{xai_request_id(stack, job_id)}"]
    assert statuses[-1] == 200 and 202 in statuses


def test_a_moderated_video_fails_saying_so_with_xais_message_and_cost(api, sim, inbox):
    sim.update(video_moderation_rate=1.0)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=60)
    assert job["status"] == "failed"
    assert job["error"] == {
        "code": "content_moderated",
        "message": "Generated video rejected by content moderation.",
        "cost_in_usd_ticks": 3 * 500_000_000,  # billed all the same: 3 s at $0.05/s
    }
    assert inbox.for_job(job_id)[0]["attributes"]["status"] == "failed"


def test_an_expired_video_fails_with_a_clear_error(api, sim):
    sim.update(video_expired_rate=1.0)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=60)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "expired" and "no longer available" in job["error"]["message"]
