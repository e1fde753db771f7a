"""xAI misbehaving during submit or poll: the job still reaches the right terminal status."""

import json
import time

import pytest

from .helpers import wait_for_status, xai_request_id

VIDEO = {"prompt": "rain on a tin roof", "duration": 3}


def test_submit_429s_are_retried_until_the_job_completes(api, sim):
    sim.inject("/v1/videos/generations", 429, 429)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    assert [c.status for c in sim.calls if c.path == "/v1/videos/generations"][-3:] == [429, 429, 200]


@pytest.mark.parametrize("outcome", [500, 503, "hang", "reset"])
def test_a_submit_whose_fate_is_unknown_is_sent_once_and_says_so(api, sim, outcome):
    # xAI may have accepted it (and documents no idempotency key): sending it again could pay twice.
    sim.update(hang_seconds=20)
    sim.inject("/v1/videos/generations", outcome)
    submits = sim.count("/v1/videos/generations")
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "failed" and job["error"]["code"] == "submit_outcome_unknown", job
    deadline = time.time() + 25  # a hung call is logged when the simulator gives up on it
    while sim.count("/v1/videos/generations") <= submits and time.time() < deadline:
        time.sleep(0.2)
    assert sim.count("/v1/videos/generations") == submits + 1


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


def test_a_crashing_poll_step_fails_the_job_without_its_internals(api, stack, inbox):
    # GIVEN a Poll that crashes, as a bug would, with internals in its message
    stack.runtime.fail_next["PollFunction"] = [
        "An error occurred (AccessDeniedException) when calling the GetItem operation: "
        "arn:aws:dynamodb:us-east-1:123456789012:table/xjobs-JobsTable is not authorized"
    ]
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]

    # THEN the job fails with our stable code, and neither the tenant nor SNS sees the cause
    job = wait_for_status(api, job_id)
    assert job["status"] == "failed"
    assert job["error"] == {"code": "internal_error", "message": "the job stopped on an internal error"}
    (notice,) = inbox.for_job(job_id)
    assert notice["attributes"]["status"] == "failed"
    assert "123456789012" not in json.dumps(notice) and "arn:aws" not in json.dumps(notice)


@pytest.mark.parametrize("fault", ["throttle", "timeout"])
def test_a_poll_throttled_or_timed_out_past_its_retries_still_completes(api, stack, inbox, fault):
    # GIVEN every attempt of the first Poll (the first and its 3 retries) throttled, or timed out
    stack.runtime.inject("PollFunction", fault, times=4)

    # WHEN a job runs
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]

    # THEN the loop backs off, polls again, and the job completes, announced once
    job = wait_for_status(api, job_id, timeout=90)
    assert job["status"] == "completed", job
    # (A timed-out Poll may have done its work: the job completes while the loop still backs off.)
    assert len(inbox.for_job(job_id, timeout=60)) == 1
    entered = [
        event["stateEnteredEventDetails"]["name"]
        for event in history(stack, job_id)
        if "stateEnteredEventDetails" in event
    ]
    assert entered.count("Count fault") == 1 and "Back off" in entered


def test_a_finish_whose_reply_is_lost_announces_once_with_one_event_id(api, stack, inbox):
    # GIVEN a Finish that does its work but whose caller is told it timed out (Step Functions retries it)
    stack.runtime.inject("FinishFunction", "timeout", times=1)

    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]

    assert wait_for_status(api, job_id)["status"] == "completed"
    notices = inbox.for_job(job_id, expect=2, timeout=10)
    assert len(notices) == 1
    assert notices[0]["body"]["id"] == notices[0]["attributes"]["event_id"] == f"evt_{job_id}"


def history(stack, job_id: str) -> list[dict]:
    machine = stack.resources.physical["JobStateMachine"]
    execution = machine.replace(":stateMachine:", ":execution:") + f":{job_id}"
    return stack.client("stepfunctions").get_execution_history(executionArn=execution, maxResults=1000)[
        "events"
    ]


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
