"""The Poll step's submit (xjobs.loop.poll on a pending job), against moto's server and the simulator."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from xjobs import jobs, loop
from xjobs.ids import new_id
from xjobs.settings import get_settings

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


def test_two_attempts_at_once_leave_one_xai_request_the_jobs_and_cancel_the_other(
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

    # THEN the loop goes on polling (it does not end a job that is running), the job keeps the
    # request of the attempt that recorded first, and the other request is cancelled at xAI
    assert [reply["finished"] for reply in replies] == [False, False]
    job = jobs.JobStore(batch_settings.jobs_table).get(pending_video)
    assert job["status"] == jobs.PROCESSING
    both = submits(sim)
    assert len(both) == 2 and job["xai_request_id"] in both
    (other,) = set(both) - {job["xai_request_id"]}
    cancelled = [c.request_id for c in sim.calls if c.path.endswith("/cancel")]
    assert cancelled == [other]
    assert "xai_cancel_requested_at" not in job, "a later cancel of the job must still reach xAI"
