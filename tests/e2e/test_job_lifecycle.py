"""Deferred jobs from submit to SNS, over HTTP, against the simulator."""

import time

import httpx

from .helpers import wait_for_status, xai_request_id

VIDEO = {"prompt": "a lighthouse in a storm", "duration": 4}
SIGV4 = "X-Amz-Algorithm=AWS4-HMAC-SHA256"
CHAT = {"model": "grok-4", "deferred": True, "messages": [{"role": "user", "content": "say hello"}]}


def test_video_generation_completes_with_a_copy_of_the_video_in_s3(api, stack, sim, inbox):
    # GIVEN a video job accepted by the API
    reply = api.post("/v1/videos/generations", json=VIDEO)
    assert reply.status_code == 202
    accepted = reply.json()
    assert accepted["status"] == "pending" and accepted["kind"] == "video.generation"
    assert isinstance(accepted["created"], int)

    # WHEN the loop runs it to the end
    job = wait_for_status(api, accepted["id"])

    # THEN it completed, its video is served from our bucket, and SNS said so once
    assert job["status"] == "completed", job
    assert job["error"] is None and job["attempts"] >= 1
    url = job["data"][0]["url"]
    assert stack.resources.physical["DataBucket"] in url
    assert SIGV4 in url  # buckets refuse SigV2 presigned URLs
    video = httpx.get(url)
    assert video.status_code == 200 and len(video.content) > 1000
    assert sim.finish_at(xai_request_id(stack, accepted["id"])) is not None
    messages = inbox.for_job(accepted["id"])
    assert len(messages) == 1
    # The notice's link is signed by Finish's role: SigV4, and the role may read the video.
    noticed = messages[0]["body"]["job"]["data"][0]["url"]
    assert SIGV4 in noticed
    assert httpx.get(noticed).content == video.content
    assert messages[0]["attributes"] == {
        "event": "job.finished",
        "event_id": f"evt_{accepted['id']}",
        "kind": "video.generation",
        "status": "completed",
        "tenant": stack.tenant,
    }
    assert messages[0]["attributes"]["event_id"].startswith("evt_")


def test_video_alias_route_reads_the_same_job(api):
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    assert api.get(f"/v1/videos/{job_id}").json()["id"] == job_id


def test_video_edit_completes(api):
    reply = api.post(
        "/v1/videos/edits", json={"prompt": "make it night", "video": {"url": "https://example.com/in.mp4"}}
    )
    assert reply.status_code == 202
    job = wait_for_status(api, reply.json()["id"])
    assert job["status"] == "completed" and job["kind"] == "video.edit"
    assert job["data"][0]["url"]


def test_deferred_chat_completes_with_the_result_kept(api, stack, sim, inbox):
    reply = api.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 202
    job = wait_for_status(api, reply.json()["id"])
    assert job["status"] == "completed", job
    assert job["result"]["choices"][0]["message"]["content"] == "echo: say hello"
    # The result can be read from xAI only once: it must have been stored, and reads come from the store.
    again = api.get(f"/v1/jobs/{job['id']}").json()
    assert again["result"] == job["result"]
    assert [m["attributes"]["kind"] for m in inbox.for_job(job["id"])] == ["chat.completion"]


def test_failed_xai_job_ends_failed_with_xai_error(api, sim, inbox):
    sim.update(video_failure_rate=1.0)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    job = wait_for_status(api, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "internal_error" and job["error"]["message"]
    assert job["data"] is None
    assert inbox.for_job(job_id)[0]["attributes"]["status"] == "failed"


def test_xai_rejecting_the_request_fails_the_job_with_its_message(api):
    job_id = api.post("/v1/chat/completions", json={**CHAT, "model": "not-a-grok-model"}).json()["id"]
    job = wait_for_status(api, job_id)
    assert job["status"] == "failed"
    assert "not-a-grok-model" in job["error"]["message"]


def test_job_past_its_deadline_times_out_without_calling_a_cancel_route_xai_lacks(api, stack, sim, inbox):
    sim.update(video_duration_median=60)
    job_id = api.post("/v1/videos/generations", json={**VIDEO, "timeout_seconds": 3}).json()["id"]
    job = wait_for_status(api, job_id, timeout=30)
    assert job["status"] == "timed_out"
    assert job["error"]["code"] == "timed_out"
    request_id = xai_request_id(stack, job_id)
    assert sim.count(f"/v1/videos/{request_id}/cancel") == 0
    assert inbox.for_job(job_id)[0]["attributes"]["status"] == "timed_out"


def test_cancel_stops_the_loop_at_once(api, stack, sim, inbox):
    sim.update(video_duration_median=60)
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    wait_for_status(api, job_id, statuses={"processing"})

    started = time.time()
    reply = api.post(f"/v1/jobs/{job_id}/cancel")
    assert reply.status_code == 200 and reply.json()["status"] == "cancelled"

    # The parked loop is woken, not left to its timer: the notice comes well before the next poll.
    messages = inbox.for_job(job_id)
    assert [m["attributes"]["status"] for m in messages] == ["cancelled"]
    assert time.time() - started < 5
    request_id = xai_request_id(stack, job_id)
    polls = sim.count(f"/v1/videos/{request_id}", method="GET")
    time.sleep(3)
    assert sim.count(f"/v1/videos/{request_id}", method="GET") == polls  # no poll after the end
    assert sim.count(f"/v1/videos/{request_id}/cancel") == 0  # cancel stops our loop; xAI has no route
    assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_cancel_of_a_finished_job_is_a_conflict(api):
    job_id = api.post("/v1/chat/completions", json=CHAT).json()["id"]
    wait_for_status(api, job_id)
    reply = api.post(f"/v1/jobs/{job_id}/cancel")
    assert reply.status_code == 409
    assert "completed" in reply.json()["error"]["message"]


def test_idempotency_key_returns_the_first_answer_and_creates_one_job(api, sim):
    headers = {"Idempotency-Key": f"retry-{time.time_ns()}"}
    body = {**VIDEO, "prompt": f"idempotent {time.time_ns()}"}
    first = api.post("/v1/videos/generations", json=body, headers=headers)
    second = api.post("/v1/videos/generations", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    wait_for_status(api, first.json()["id"])
    submits = [
        c
        for c in sim.calls
        if c.path == "/v1/videos/generations" and (c.body or {}).get("prompt") == body["prompt"]
    ]
    assert len(submits) == 1
    reused = api.post("/v1/videos/generations", json={**body, "duration": 9}, headers=headers)
    assert reused.status_code == 422


def test_each_finished_job_is_announced_exactly_once(api, stack, inbox):
    job_id = api.post("/v1/chat/completions", json=CHAT).json()["id"]
    wait_for_status(api, job_id)
    assert len(inbox.for_job(job_id)) == 1
    # A retried Finish step (as Step Functions does after a lost response) must not publish again.
    stack.runtime.invoke("FinishFunction", {"job_id": job_id, "error": None})
    time.sleep(0.5)
    assert len(inbox.for_job(job_id, expect=2, timeout=2)) == 1
