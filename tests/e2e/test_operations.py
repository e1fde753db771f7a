"""What an operator sees of jobs: the metrics of an end-to-end run (EMF lines the functions printed,
counted by the local runtime), and the sweeper restarting a job whose loop ended."""

import time

from .helpers import job_record, wait_for_status

VIDEO = {"prompt": "a kite over a beach", "duration": 4}


def counts(stack, name: str, **dimensions) -> float:
    return stack.metrics.sum(name, **dimensions)


def test_a_job_run_emits_its_metrics(api, stack, sim, inbox):
    before = {
        "submitted": counts(stack, "JobsSubmitted", Kind="video.generation"),
        "finished": counts(stack, "JobsFinished", Kind="video.generation", Status="completed"),
        "rate_limited": counts(stack, "XaiCalls", Operation="submit", Outcome="rate_limited"),
        "submits": counts(stack, "XaiCalls", Operation="submit", Outcome="ok"),
        "notices": counts(stack, "NoticesSent", Channel="sns", Event="job.finished"),
    }
    sim.inject("/v1/videos/generations", 429)  # the first submit is refused: the loop waits and submits again

    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    assert wait_for_status(api, job_id)["status"] == "completed"
    assert len(inbox.for_job(job_id)) == 1

    assert counts(stack, "JobsSubmitted", Kind="video.generation") == before["submitted"] + 1
    assert (
        counts(stack, "JobsFinished", Kind="video.generation", Status="completed") == before["finished"] + 1
    )
    assert counts(stack, "XaiCalls", Operation="submit", Outcome="rate_limited") == before["rate_limited"] + 1
    assert counts(stack, "XaiCalls", Operation="submit", Outcome="ok") == before["submits"] + 1
    assert counts(stack, "NoticesSent", Channel="sns", Event="job.finished") >= before["notices"] + 1
    # Each metric is published by service alone too (what the alarms watch), from the same line.
    latencies = stack.metrics.matching("XaiLatency", Operation="status")
    assert latencies and all(
        p.unit == "Milliseconds" and p.dimensions["service"] == "xjobs" for p in latencies
    )
    assert {p.function for p in stack.metrics.matching("JobsSubmitted")} == {"ApiFunction"}


def test_a_refused_request_counts_nothing_and_submits_nothing(api, stack):
    before = counts(stack, "JobsSubmitted")
    reply = api.post("/v1/videos/generations", json={"prompt": ""})
    assert reply.status_code == 400
    assert counts(stack, "JobsSubmitted") == before


def test_the_sweeper_restarts_a_job_whose_execution_was_stopped(api, stack, sim, inbox):
    sim.update(video_duration_median=6.0, video_duration_sigma=0.01)
    restarted = counts(stack, "StalledWork", Kind="job", Action="restarted")
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    wait_for_status(api, job_id, statuses={"processing"})

    # The job's loop is stopped while xAI still works on the video: nothing would ever poll it again.
    sfn = stack.client("stepfunctions")
    machine = stack.resources.physical["JobStateMachine"]
    execution = f"{machine.replace(':stateMachine:', ':execution:')}:{job_id}"
    sfn.stop_execution(executionArn=execution)
    deadline = time.time() + 10
    # AWS reports ABORTED; the emulator's interpreter may end a stopped callback wait FAILED instead.
    # The sweeper treats both alike.
    while sfn.describe_execution(executionArn=execution)["status"] not in ("ABORTED", "FAILED"):
        assert time.time() < deadline, "the execution did not stop"
        time.sleep(0.2)

    job = wait_for_status(api, job_id, timeout=60)
    assert job["status"] == "completed", job
    record = job_record(stack, job_id)
    assert record["execution"] == f"{job_id}-r1" and record["restarts"] == 1
    assert counts(stack, "StalledWork", Kind="job", Action="restarted") == restarted + 1
    assert len(inbox.for_job(job_id)) == 1
    time.sleep(3)  # later sweeps leave the job alone: its new execution ended well
    assert job_record(stack, job_id)["restarts"] == 1
