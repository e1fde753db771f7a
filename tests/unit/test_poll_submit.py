"""The Poll step's submit (xjobs.loop.poll on a pending job), against moto's server and the simulator."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from xjobs import jobs, loop
from xjobs.ids import new_id
from xjobs.settings import get_settings
from xjobs.xai import XaiClient, XaiUnavailable

VIDEO = {"model": "grok-imagine-video", "prompt": "a lantern on a pier", "duration": 4}


@pytest.fixture
def pending_video(batch_settings) -> str:
    now = int(time.time())
    job_id = new_id("job")
    jobs.JobStore(batch_settings.jobs_table).create(
        {
            "id": job_id,
            "tenant": "tenant-submit",
            "kind": "video.generation",
            "model": VIDEO["model"],
            "status": jobs.PENDING,
            "created": now,
            "updated": now,
            "deadline": now + 600,
            "attempts": 0,
            "request": json.dumps(VIDEO),
            "expires_at": now + 86400,
        }
    )
    return job_id


def submits(sim) -> list[str]:
    return [c.request_id for c in sim.calls if c.method == "POST" and c.path == "/v1/videos/generations"]


def test_a_submit_hands_the_job_to_xai_and_keeps_polling(batch_settings, sim, pending_video):
    reply = loop.poll(pending_video, 0)

    assert reply["finished"] is False and reply["polls"] == 1 and reply["wait_seconds"] >= 1
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PROCESSING
    assert job["xai_request_id"] == submits(sim)[0]
    assert job["submitted_at"] == job["polled_at"]


def test_two_attempts_at_once_send_one_submit_and_both_keep_the_loop_going(
    batch_settings, sim, pending_video, monkeypatch
):
    # GIVEN a retried Poll invoke running while the first attempt still waits on xAI's answer
    sim.update(video_submit_latency=0.5, video_cancel=True, video_requests_per_second=0)
    monkeypatch.setenv("VIDEO_REQUESTS_PER_SECOND", "10")  # the limiter lets both go
    monkeypatch.setenv("XAI_VIDEO_CANCEL", "true")  # the upstream has the cancel route (an extension)
    get_settings.cache_clear()

    # WHEN both attempts submit the pending job
    with ThreadPoolExecutor(max_workers=2) as pool:
        replies = list(pool.map(lambda _: loop.poll(pending_video, 0), range(2)))

    # THEN xAI gets one submit (a second would be a second video, paid twice); the attempt that did
    # not send waits for the other's answer, and the loop goes on polling the job's one request
    assert [reply["finished"] for reply in replies] == [False, False]
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PROCESSING
    assert submits(sim) == [job["xai_request_id"]]
    assert not [c for c in sim.calls if c.path.endswith("/cancel")]


@pytest.mark.parametrize("fault", [500, 503, "reset"])
def test_a_submit_that_may_have_been_accepted_is_not_sent_again_and_the_job_says_so(
    batch_settings, sim, pending_video, fault
):
    # GIVEN xAI answers the submit with a 5xx, or drops the connection after reading it
    sim.inject("/v1/videos/generations", fault)

    # WHEN the loop submits, and the state machine runs Poll again
    first = loop.poll(pending_video, 0)
    again = loop.poll(pending_video, first["polls"])

    # THEN the job fails with a code that says xAI may have it, and xAI saw exactly one submit
    assert first["finished"] is True and again["finished"] is True
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.FAILED
    assert job["error"]["code"] == loop.SUBMIT_UNKNOWN
    assert "not paid twice" in job["error"]["message"]
    assert len([c for c in sim.calls if c.path == "/v1/videos/generations"]) == 1


def test_a_submit_timeout_is_not_sent_again(batch_settings, sim, pending_video, monkeypatch):
    from xjobs import upstream

    sim.update(hang_seconds=3)
    sim.inject("/v1/videos/generations", "hang")
    monkeypatch.setattr(
        upstream, "_client", lambda base, key, *_: XaiClient(base, key, timeout=0.5, max_attempts=2)
    )

    reply = loop.poll(pending_video, 0)

    assert reply["finished"] is True
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert (job["status"], job["error"]["code"]) == (jobs.FAILED, loop.SUBMIT_UNKNOWN)
    assert "timed out" in job["error"]["message"]
    time.sleep(3)  # the simulator logs the hung call when its hang ends
    assert len([c for c in sim.calls if c.path == "/v1/videos/generations"]) == 1


def test_a_submit_that_never_connected_is_retried_by_the_state_machine(
    batch_settings, pending_video, monkeypatch, sim
):
    # GIVEN nothing listens where xAI should be: the submit never leaves
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{placeholder.getsockname()[1]}/v1"
    monkeypatch.setenv("XAI_BASE_URL", closed)
    monkeypatch.setenv("VIDEO_REQUESTS_PER_SECOND", "10")  # the second try is not held back
    get_settings.cache_clear()

    with pytest.raises(XaiUnavailable, match="could not connect"):
        loop.poll(pending_video, 0)

    # THEN the job is still pending and free to be sent: the state machine's Retry runs Poll again
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PENDING and loop.SUBMIT_FLAG not in job
    monkeypatch.setenv("XAI_BASE_URL", sim.base_url)
    get_settings.cache_clear()
    assert loop.poll(pending_video, 1)["finished"] is False
    assert jobs.JobStore(batch_settings.jobs_table).get(pending_video)["xai_request_id"] == submits(sim)[0]


def test_a_submit_sent_by_an_attempt_that_died_fails_the_job_once_its_answer_cannot_come(
    batch_settings, sim, pending_video
):
    # GIVEN an earlier attempt marked the submit sent and never recorded an answer (its Lambda died)
    store = jobs.JobStore(batch_settings.jobs_table)
    store.claim(pending_video, loop.SUBMIT_FLAG)

    # WHEN Poll runs again within the grace, it waits for that attempt's answer without sending
    reply = loop.poll(pending_video, 1)
    assert reply["finished"] is False
    assert loop.SUBMIT_GRACE_SECONDS - 5 <= reply["wait_seconds"] <= loop.SUBMIT_GRACE_SECONDS
    assert submits(sim) == []

    # AND past the grace, the job fails as possibly accepted, still without a submit
    store.table.update_item(
        Key={"id": pending_video},
        UpdateExpression="SET #flag = :then",
        ExpressionAttributeNames={"#flag": loop.SUBMIT_FLAG},
        ExpressionAttributeValues={":then": int(time.time()) - loop.SUBMIT_GRACE_SECONDS - 1},
    )
    assert loop.poll(pending_video, 2)["finished"] is True
    job = store.get(pending_video)
    assert (job["status"], job["error"]["code"]) == (jobs.FAILED, loop.SUBMIT_UNKNOWN)
    assert submits(sim) == []


@pytest.mark.parametrize("status", [429, 403])
def test_a_job_waits_while_the_account_is_out_of_credits_and_goes_on_when_they_return(
    batch_settings, sim, pending_video, monkeypatch, notifications, status
):
    from xjobs import upstream

    monkeypatch.setenv("ACCOUNT_PROBE_SECONDS", "5")
    monkeypatch.setenv("VIDEO_REQUESTS_PER_SECOND", "10")
    get_settings.cache_clear()
    notifications.read()
    sim.update(credits_exhausted=True, credits_exhausted_status=status)

    # WHEN the submit meets the billing error, the job is not failed: it waits, and may be sent later
    reply = loop.poll(pending_video, 0)
    blocked_at = time.time()
    assert reply["finished"] is False and reply["wait_seconds"] >= 4
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PENDING and loop.SUBMIT_FLAG not in job
    assert upstream.account().blocked(fresh=True).status_code == status
    assert [n["attributes"]["event"] for n in notifications.read()] == ["account.blocked"]

    # WHILE it lasts, a poll within the probe interval does not call xAI at all
    calls = len(sim.calls)
    assert loop.poll(pending_video, 1)["finished"] is False
    assert len(sim.calls) == calls

    # WHEN credits return, the next probe submits the job and lifts the block
    sim.update(credits_exhausted=False)
    time.sleep(max(0.0, blocked_at + 5.1 - time.time()))
    assert loop.poll(pending_video, 2)["finished"] is False
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PROCESSING and job["xai_request_id"] == submits(sim)[-1]
    assert upstream.account().blocked(fresh=True) is None
    assert [n["attributes"]["event"] for n in notifications.read()] == ["account.resumed"]
