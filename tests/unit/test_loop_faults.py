"""The job loop under faults: it cannot spin, overflow, leak internals or lose its notice."""

import contextlib
import json
import logging
import socket
import threading
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from local.cloudformation import ROOT
from xjobs import aws, jobs, loop, notify
from xjobs.ids import new_id
from xjobs.loop import MAX_POLLS, next_wait

ASL = json.loads((ROOT / "statemachine" / "deferred_job.asl.json").read_text())


def make_job(settings, status=jobs.PENDING, **fields) -> str:
    now = int(time.time())
    job_id = new_id("job")
    jobs.JobStore(settings.jobs_table).create(
        {
            "id": job_id,
            "tenant": "tenant-faults",
            "kind": "video.generation",
            "model": "grok-imagine-video",
            "status": status,
            "created": now,
            "updated": now,
            "deadline": now + 600,
            "attempts": 0,
            "request": json.dumps({"model": "grok-imagine-video", "prompt": "a gull"}),
            "expires_at": now + 86400,
            **fields,
        }
    )
    return job_id


# -- no spin, no overflow -----------------------------------------------------------------------------


def edges(state: dict) -> list[tuple[str, str]]:
    """(how, next state) of every way out of a state."""
    out = [("next", state["Next"])] if "Next" in state else []
    out += [("default", state["Default"])] if "Default" in state else []
    out += [("choice", choice["Next"]) for choice in state.get("Choices", [])]
    out += [(",".join(catch["ErrorEquals"]), catch["Next"]) for catch in state.get("Catch", [])]
    return out


def test_every_way_back_to_poll_passes_a_wait_a_timer_or_a_wake():
    states = ASL["States"]
    parked = "Wait"  # the task that parks on a token: success is a wake, States.Timeout the timer
    assert states[parked]["Resource"].endswith("waitForTaskToken")
    into_poll = [
        (name, how) for name, state in states.items() for how, target in edges(state) if target == "Poll"
    ]

    for name, how in into_poll:
        is_wait = states[name]["Type"] == "Wait" and (
            states[name].get("Seconds", 1) >= 1 or "SecondsPath" in states[name]
        )
        assert is_wait or (name, how) in {(parked, "next"), (parked, "States.Timeout")}, (name, how)


def test_a_platform_error_after_polls_retries_is_counted_and_waited_out_not_the_end_of_the_job():
    poll = ASL["States"]["Poll"]
    platform = set(poll["Retry"][0]["ErrorEquals"])
    first_catch = poll["Catch"][0]

    assert {"Lambda.TooManyRequestsException", "Sandbox.Timedout", "PlatformUnavailable"} <= platform
    assert set(first_catch["ErrorEquals"]) == platform
    assert first_catch["Next"] == "Count fault"
    assert ASL["States"]["Count fault"]["Parameters"]["faults.$"] == "States.MathAdd($.faults, 1)"


@pytest.mark.parametrize("spent", [1_000, 1_800, 10**6])
def test_the_wait_never_overflows_however_many_polls(spent):
    assert next_wait(spent, 3600, 2, 60) == 3601  # past the budget: the next poll is at the deadline


def test_below_the_budget_a_huge_growth_stays_at_the_cap():
    assert next_wait(MAX_POLLS - 1, 30, 2, 60) == 31
    assert loop.MAX_GROWTH_STEPS < 1_750  # 1.5 ** 1750 overflows a float


def test_a_poll_far_past_its_budget_waits_for_the_deadline_instead_of_failing(batch_settings, sim):
    job_id = make_job(batch_settings)

    reply = loop.poll(job_id, 10_000, 3)

    assert reply["finished"] is False
    assert 590 <= reply["wait_seconds"] <= 601
    assert reply["faults"] == 3 and reply["polls"] == 10_001


def test_park_accepts_news_that_poll_saw_and_refuses_news_that_came_after(batch_settings):
    store = jobs.JobStore(batch_settings.jobs_table)
    job_id = make_job(batch_settings, jobs.PROCESSING, polled_at=1_000, news_at=2_000)

    # Poll saw news 2,000 but the limiter was full: parking on the timer Poll set is right, not a spin
    assert loop.park(job_id, "token-1", seen_news=2_000) == {"job_id": job_id, "parked": True}
    # news after what Poll read: the loop must poll again (after its Pause)
    store.note_news(job_id, min_interval_ms=1000, most=20)
    with pytest.raises(loop.JobNotActive):
        loop.park(job_id, "token-2", seen_news=2_000)


# -- internals never leak ------------------------------------------------------------------------------

ARN_CAUSE = json.dumps(
    {
        "errorType": "ClientError",
        "errorMessage": "An error occurred (AccessDeniedException) when calling the GetItem operation: "
        "User: arn:aws:sts::123456789012:assumed-role/xjobs-PollRole/x is not authorized",
        "stackTrace": ["..."],
    }
)


def test_a_step_error_reaches_the_job_and_sns_as_our_code_only(batch_settings, notifications):
    job_id = make_job(batch_settings, jobs.PROCESSING)
    notifications.read()

    loop.finish(job_id, {"Error": "ClientError", "Cause": ARN_CAUSE})

    job = jobs.JobStore(batch_settings.jobs_table).get(job_id)
    assert job["status"] == jobs.FAILED
    assert job["error"] == loop.INTERNAL_ERROR
    (notice,) = [n for n in notifications.read() if n["message"]["job"]["id"] == job_id]
    assert "123456789012" not in json.dumps(notice) and "AccessDenied" not in json.dumps(notice)


@pytest.mark.parametrize(
    ("code", "status"),
    [("ThrottlingException", 400), ("ProvisionedThroughputExceededException", 400), ("Boom", 503)],
)
def test_an_aws_fault_becomes_platform_unavailable_without_its_text(code, status):
    error = {"Error": {"Code": code, "Message": "arn:aws:dynamodb:us-east-1:123456789012:table/jobs"}}
    error["ResponseMetadata"] = {"HTTPStatusCode": status}

    with pytest.raises(loop.PlatformUnavailable) as caught, loop.platform_faults("poll"):
        raise ClientError(error, "UpdateItem")

    assert "123456789012" not in str(caught.value) and "arn:" not in str(caught.value)


def test_a_request_error_of_ours_is_not_a_platform_fault():
    error = {
        "Error": {"Code": "ValidationException", "Message": "bad"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }

    with pytest.raises(ClientError), loop.platform_faults("poll"):
        raise ClientError(error, "UpdateItem")


def test_botocore_never_logs_at_debug_even_when_everything_else_does(batch_settings, caplog):
    from aws_lambda_powertools import Logger

    Logger(service="xjobs", level="DEBUG")  # LogLevel=DEBUG
    caplog.set_level(logging.DEBUG)  # and the root logger at DEBUG, as Lambda's runtime can set it

    aws.table(batch_settings.jobs_table).get_item(Key={"id": "job_none"})
    boto3.client("sts").get_caller_identity()  # a client that is not ours

    chatty = [r for r in caplog.records if r.name.split(".")[0] in ("botocore", "boto3", "urllib3")]
    assert [r for r in chatty if r.levelno < logging.INFO] == []


# -- exactly one notice ----------------------------------------------------------------------------


@pytest.fixture
def silent_sns(monkeypatch):
    """An SNS endpoint on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: server.accept()[0], None)), daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def test_a_finish_killed_while_publishing_leaves_the_job_to_the_next_attempt(
    batch_settings, notifications, silent_sns, monkeypatch
):
    # GIVEN a Finish stuck publishing (SNS never answers), as one Lambda then kills for its timeout
    monkeypatch.setattr(notify, "NOTICE_LEASE_SECONDS", 1)
    job_id = make_job(batch_settings, jobs.COMPLETED)
    notifications.read()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", silent_sns)
    aws.client.cache_clear()
    aws.publisher.cache_clear()
    stuck = threading.Thread(target=lambda: _quietly(loop.finish, job_id, None), daemon=True)
    stuck.start()
    deadline = time.time() + 10
    while not (
        set(jobs.JobStore(batch_settings.jobs_table).get(job_id)) & {"notice_lease_until", "notified_at"}
    ):
        assert time.time() < deadline, "the first Finish never claimed the notice"
        time.sleep(0.05)

    # WHEN Step Functions runs Finish again, once the first one's lease has run out
    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS")
    aws.client.cache_clear()
    aws.publisher.cache_clear()
    time.sleep(2.1)  # the lease is stored in whole seconds: 1 s may read as up to 2
    loop.finish(job_id, None)

    # THEN the job is announced, once, and a third Finish publishes nothing
    loop.finish(job_id, None)
    notices = [n for n in notifications.read() if n["message"]["job"]["id"] == job_id]
    assert len(notices) == 1
    assert notices[0]["attributes"]["event_id"] == notices[0]["message"]["id"] == f"evt_{job_id}"
    stuck.join(15)


def test_a_finish_that_finds_the_notice_leased_asks_to_be_retried(batch_settings, notifications):
    job_id = make_job(batch_settings, jobs.COMPLETED, notice_lease_until=int(time.time()) + 60)

    with pytest.raises(notify.NoticeLeased):
        loop.finish(job_id, None)
    assert [n for n in notifications.read() if n["message"]["job"]["id"] == job_id] == []


def _quietly(function, *args) -> None:
    # The stuck Finish ends in a timeout; Lambda would have killed it before.
    with contextlib.suppress(Exception):
        function(*args)
