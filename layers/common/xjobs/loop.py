"""The steps of a job's state machine: Poll, Wait (park) and Finish."""

import contextlib
import json
import math
import tempfile
import time

from . import aws, jobs, notify
from .batch_lines import estimated_tokens
from .durations import Durations, next_poll_in, profile
from .limiter import RateLimiter
from .notify import callback_url
from .observability import logger
from .settings import get_settings
from .upstream import chat_limiter, learn_limits, secret, xai_client
from .views import job_view, result_key, video_key
from .xai import DEFERRED_CHAT, XaiError, XaiRateLimited, XaiRejected

# Each pass through Poll -> Finished? -> Wait writes about 13 history events, and a Poll that
# exhausts its Retry adds 18 more: 700 polls stay under the 25,000-event limit even then
# (tests/e2e/test_history_limit.py measures it). Long deadlines spread their polls to fit.
MAX_POLLS = 700
WAIT_GROWTH = 1.5
NOTIFIED_FLAG = "notified_at"
WEBHOOK_FLAG = "webhook_delivered_at"


def next_wait(
    polls: int, seconds_left: float, min_wait: int, max_wait: int, learned: float | None = None
) -> int:
    """Seconds until the next poll, spread to fit the poll budget: `learned` (from how long such jobs
    take, see durations.py) up to the cap or, without it, short at first and growing to the cap."""
    if learned is None:
        wait = min(max_wait, min_wait * WAIT_GROWTH ** max(0, polls - 1))
    else:
        wait = round(min(max_wait, learned))
    polls_left = max(1, MAX_POLLS - polls)
    if seconds_left > max_wait * polls_left / 2:
        # Capped waits might not reach the deadline within the budget: spread what is left over it.
        wait = max(wait, seconds_left / polls_left)
    wait = min(wait, seconds_left + 1)
    return max(1, math.ceil(wait))


def poll(job_id: str, polls: int) -> dict:
    settings = get_settings()
    store = jobs.JobStore(settings.jobs_table)
    job = store.get(job_id)
    if job is None:
        raise jobs.JobNotFound(job_id)
    logger.append_keys(tenant=job["tenant"])
    polls += 1

    def result(finished: bool, wait: float = 0, *, submitted: bool = False) -> dict:
        left = job["deadline"] - time.time()
        if not finished:
            learned = _learned_wait(job, settings) if submitted else None
            wait = max(
                wait,
                next_wait(
                    polls, left, settings.poll_min_wait_seconds, settings.poll_max_wait_seconds, learned
                ),
            )
            if settings.callback_base_url and submitted:
                # The upstream's callback wakes the loop; this wait is only the fallback poll.
                wait = max(wait, settings.callback_fallback_seconds)
            wait = min(math.ceil(wait), max(1, math.ceil(left + 1)))
        return {
            "job_id": job_id,
            "polls": polls,
            "finished": finished,
            "wait_seconds": int(wait),
            "error": None,
        }

    if job["status"] in jobs.TERMINAL:
        if job["status"] == jobs.CANCELLED:
            _cancel_upstream(job)
        return result(True)
    if time.time() >= job["deadline"]:
        error = {
            "code": "timed_out",
            "message": f"the job did not finish within {job['deadline'] - job['created']} s",
        }
        if store.advance(job_id, jobs.TIMED_OUT, error=error):
            _cancel_upstream(job)
        return result(True)

    client = xai_client()
    if not job.get("xai_request_id"):
        return _submit(store, job, client, settings, result)
    # Status reads count against the account's limit like chat work: they share its limiter.
    limiter = chat_limiter()
    wait = limiter.try_acquire()
    if wait:
        return result(False, wait)
    try:
        status = client.status(job["kind"], job["xai_request_id"])
    except XaiRateLimited as exc:
        learn_limits(exc.limits)
        limiter.block(exc.retry_after)
        logger.info("status poll answered 429: polling again later", extra={"seconds": exc.retry_after})
        return result(False, exc.retry_after)
    except XaiRejected as exc:
        store.advance(job_id, jobs.FAILED, error={"code": exc.code, "message": exc.message})
        return result(True)
    if status.state == "pending":
        store.record_poll(job_id, status.progress)
        return result(False, submitted=True)
    store.record_poll(job_id, None)
    if status.state == "done":
        stored = _store_result(job, status, client)
        if store.advance(job_id, jobs.COMPLETED, progress=100, **stored):
            _learn_duration(job, settings)
    else:
        store.advance(job_id, jobs.FAILED, error=status.error)
    return result(True)


def _submit(store: jobs.JobStore, job: dict, client, settings, result) -> dict:
    body = json.loads(job["request"])
    if job["kind"] == DEFERRED_CHAT:
        wait = chat_limiter().try_acquire(tokens=estimated_tokens(body))
    else:
        wait = RateLimiter(
            settings.limits_table, "video-submit", settings.video_requests_per_second
        ).try_acquire()
    if wait:
        return result(False, wait)
    if settings.callback_base_url:
        body["callback_url"] = callback_url(
            settings.callback_base_url, job["id"], secret(settings.webhook_signing_secret)
        )
    try:
        request_id = client.submit(job["kind"], body)
    except XaiRateLimited as exc:
        logger.info("submit answered 429: submitting again later", extra={"seconds": exc.retry_after})
        return result(False, exc.retry_after)
    except XaiRejected as exc:
        store.advance(job["id"], jobs.FAILED, error={"code": exc.code, "message": exc.message})
        return result(True)
    logger.info("submitted to xAI", extra={"job_id": job["id"], "xai_request_id": request_id})
    submitted_at = jobs.now_ms()
    advanced = store.advance(
        job["id"],
        jobs.PROCESSING,
        xai_request_id=request_id,
        polled_at=submitted_at,
        submitted_at=submitted_at,
    )
    if advanced is None:
        return _lost_submit_race(store, job, request_id, result)
    job["submitted_at"] = submitted_at
    return result(False, submitted=True)


def _lost_submit_race(store: jobs.JobStore, job: dict, request_id: str, result) -> dict:
    """The job moved on while our submit was in flight: it was cancelled or timed out, or another
    attempt of this Poll (a retried invoke while the first still ran) submitted it first. Either way
    our xAI request is not the job's: cancel it, then end or keep polling the job's."""
    _cancel_request(job, request_id)
    current = store.get(job["id"])
    if current is None or current["status"] in jobs.TERMINAL:
        return result(True)
    logger.warning(
        "another attempt submitted the job first", extra={"job_id": job["id"], "xai_request_id": request_id}
    )
    job.update(current)
    return result(False, submitted=True)


def _learned_wait(job: dict, settings) -> float | None:
    """Seconds until the next status call as the job's profile has learned them, if it has."""
    if "submitted_at" not in job:
        return None  # submitted before xjobs kept the time
    fit = Durations(settings.limits_table).fit(profile(job))
    if fit is None:
        return None
    return next_poll_in(fit, time.time() - job["submitted_at"] / 1000)


def _learn_duration(job: dict, settings) -> None:
    """Teach the job's profile how long xAI took: until the upstream's callback if one came, else
    until halfway between the last status call that saw it pending and the one that saw it done."""
    if "submitted_at" not in job:
        return  # submitted before xjobs kept the time
    news, polled = job.get("news_at", 0), job["polled_at"]
    finished_ms = news if news > polled else (polled + jobs.now_ms()) / 2
    Durations(settings.limits_table).learn(profile(job), (finished_ms - job["submitted_at"]) / 1000)


def _store_result(job: dict, status, client) -> dict:
    """Copy the result into our bucket before the job is marked completed: xAI's copy does not last."""
    s3 = aws.client("s3")
    bucket = get_settings().data_bucket
    if job["kind"] == DEFERRED_CHAT:
        key = result_key(job["id"])
        s3.put_object(
            Bucket=bucket, Key=key, Body=json.dumps(status.result).encode(), ContentType="application/json"
        )
        return {"result_key": key}
    key = video_key(job["id"])
    with tempfile.SpooledTemporaryFile(max_size=32 << 20) as buffer:
        client.download(status.video_url, buffer)
        buffer.seek(0)
        s3.upload_fileobj(buffer, bucket, key, ExtraArgs={"ContentType": "video/mp4"})
    return {"video_key": key}


def _cancel_upstream(job: dict) -> None:
    if not job.get("xai_request_id"):
        return
    store = jobs.JobStore(get_settings().jobs_table)
    if not store.claim(job["id"], "xai_cancel_requested_at"):
        return
    _cancel_request(job, job["xai_request_id"])


def _cancel_request(job: dict, request_id: str) -> None:
    try:
        xai_client().cancel(job["kind"], request_id)
    except XaiError as exc:  # best effort: xAI documents no cancel endpoint at all
        logger.info("xAI cancel not honoured", extra={"job_id": job["id"], "reason": str(exc)})


def park(job_id: str, token: str) -> dict:
    store = jobs.JobStore(get_settings().jobs_table)
    if not store.park(job_id, token):
        raise JobNotActive(job_id)
    return {"job_id": job_id, "parked": True}


class JobNotActive(RuntimeError):
    """The job ended, or has news, while its loop was not waiting: the loop goes back to Poll."""


def wake(token: str | None) -> None:
    """Wake a parked loop early (cancel, upstream callback). A stale token is harmless."""
    if not token:
        return
    sfn = aws.client("stepfunctions")
    with contextlib.suppress(
        sfn.exceptions.TaskTimedOut, sfn.exceptions.InvalidToken, sfn.exceptions.TaskDoesNotExist
    ):
        sfn.send_task_success(taskToken=token, output="{}")


def finish(job_id: str, error: dict | None) -> dict:
    settings = get_settings()
    store = jobs.JobStore(settings.jobs_table)
    if error:
        store.advance(job_id, jobs.FAILED, error=describe_step_error(error))
    job = store.get(job_id)
    if job is None:
        raise jobs.JobNotFound(job_id)
    logger.append_keys(tenant=job["tenant"])
    if job["status"] not in jobs.TERMINAL:
        raise RuntimeError(f"job {job_id} reached Finish while {job['status']}")
    message = {"event": "job.finished", "job": job_view(job, with_result=False)}
    if store.claim(job_id, NOTIFIED_FLAG):
        try:
            notify.publish(
                settings.topic_arn,
                message,
                event="job.finished",
                kind=job["kind"],
                status=job["status"],
                tenant=job["tenant"],
            )
        except Exception:
            store.release(job_id, NOTIFIED_FLAG)
            raise
    if job.get("webhook_url") and not job.get(WEBHOOK_FLAG):
        notify.deliver_webhook(
            job["webhook_url"], message, event="job.finished", secret=secret(settings.webhook_signing_secret)
        )
        store.claim(job_id, WEBHOOK_FLAG)
    return {"job_id": job_id, "status": job["status"]}


def describe_step_error(error: dict) -> dict:
    """Turn a Step Functions error (Error, Cause) into the job's error, without stack traces."""
    code = str(error.get("Error") or "internal_error")
    cause = str(error.get("Cause") or "")
    with contextlib.suppress(ValueError):
        parsed = json.loads(cause)
        # A Lambda error's Cause is JSON with a stack trace: keep only its message.
        cause = str(parsed.get("errorMessage") or "") if isinstance(parsed, dict) else cause
    return {"code": code, "message": cause[:1000] or "the job's loop failed"}
