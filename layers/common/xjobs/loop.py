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
from .tenants import TenantError, TenantStore
from .upstream import account, chat_limiter, rate_limited, secret, xai_client
from .views import job_view, result_key, video_key
from .xai import (
    DEFERRED_CHAT,
    XaiAccountBlocked,
    XaiError,
    XaiRateLimited,
    XaiRejected,
    XaiSubmitUnknown,
    XaiUnavailable,
    rate_limit_backoff,
)

# The history of one execution holds at most 25,000 events. A pass through Poll -> Finished? -> Wait
# writes about 13, a Poll retried to its limit 9 more, a Park refused and its Pause 7 more; a fault
# cycle (Poll's retries used up, counted, backed off) about 20. Poll spends its budget of MAX_POLLS on
# polls plus fault cycles, and the state machine ends the loop after MAX_FAULTS cycles (more than 40 h
# of back-off, past any deadline the template allows): 600 x 29 + 250 x 20 < 25,000.
# tests/e2e/test_history_limit.py measures the events of real executions.
MAX_POLLS = 600
MAX_FAULTS = 250  # statemachine/deferred_job.asl.json, "Fault budget?"
WAIT_GROWTH = 1.5
CALLBACK_GRACE_SECONDS = 3600  # a callback URL works until an hour past the job's deadline
MAX_GROWTH_STEPS = 64  # WAIT_GROWTH ** n overflows a float past n = 1,750: the cap is reached long before
WEBHOOK_FLAG = "webhook_delivered_at"
# Set before a submit is sent: a later Poll that finds it without a request id knows a submit may
# have reached xAI, and never sends a second (xAI has no idempotency key: it would be paid twice).
SUBMIT_FLAG = "submit_sent_at"
# How long an earlier attempt's submit may still be in flight: past Poll's 60-s Lambda timeout.
SUBMIT_GRACE_SECONDS = 65
SUBMIT_UNKNOWN = "submit_outcome_unknown"


def next_wait(
    spent: int, seconds_left: float, min_wait: int, max_wait: int, learned: float | None = None
) -> int:
    """Seconds until the next poll, spread to fit the poll budget: `learned` (from how long such jobs
    take, see durations.py) up to the cap or, without it, short at first and growing to the cap.
    `spent` counts the polls and fault cycles so far; once it reaches MAX_POLLS the next poll is the
    one at the deadline."""
    if not math.isfinite(seconds_left):
        seconds_left = max_wait
    if spent >= MAX_POLLS:
        return max(1, math.ceil(seconds_left + 1))
    if learned is None or not math.isfinite(learned):
        wait = min(max_wait, min_wait * WAIT_GROWTH ** min(max(0, spent - 1), MAX_GROWTH_STEPS))
    else:
        wait = min(max_wait, round(learned))
    polls_left = max(1, MAX_POLLS - spent)
    if seconds_left > max_wait * polls_left / 2:
        # Capped waits might not reach the deadline within the budget: spread what is left over it.
        wait = max(wait, seconds_left / polls_left)
    wait = min(wait, seconds_left + 1)
    return max(1, math.ceil(wait))


class PlatformUnavailable(RuntimeError):
    """An AWS service the step needs failed or throttled (after the SDK's retries). The state machine
    retries, then backs off and polls again: a platform error never ends a job."""


# Error codes of AWS services that mean "busy or broken for now", not "this request is wrong".
_TRANSIENT_CODES = {
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "LimitExceededException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "ThrottledException",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "TransactionConflictException",
}


@contextlib.contextmanager
def platform_faults(step: str):
    """Report an AWS fault as PlatformUnavailable, without its text (ARNs, account ids) anywhere but
    in our logs; anything else passes through."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as AwsConnectionError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if error.get("Code") not in _TRANSIENT_CODES and status < 500:
            raise
        logger.warning(f"{step}: AWS fault", extra={"reason": str(exc)})
        raise PlatformUnavailable(f"{step}: an AWS service failed ({error.get('Code')})") from None
    except (AwsConnectionError, HTTPClientError, GetParameterError, S3UploadFailedError) as exc:
        logger.warning(f"{step}: AWS fault", extra={"reason": str(exc)})
        raise PlatformUnavailable(f"{step}: an AWS service failed ({type(exc).__name__})") from None


def poll(job_id: str, polls: int, faults: int = 0) -> dict:
    with platform_faults("poll"):
        return _poll(job_id, polls, faults)


def _poll(job_id: str, polls: int, faults: int) -> dict:
    settings = get_settings()
    store = jobs.JobStore(settings.jobs_table)
    job = store.get(job_id)
    if job is None:
        raise jobs.JobNotFound(job_id)
    logger.append_keys(tenant=job["tenant"])
    polls += 1
    spent = polls + faults
    # News (an upstream callback) the last status call has not seen: poll again as soon as allowed.
    news_pending = job.get("news_at", 0) > job.get("polled_at", 0)

    def result(finished: bool, wait: float = 0, *, submitted: bool = False, soon: bool = False) -> dict:
        left = job["deadline"] - time.time()
        if not finished:
            wait = wait if math.isfinite(wait) else settings.poll_max_wait_seconds
            learned = _learned_wait(job, settings) if submitted else None
            planned = next_wait(
                spent, left, settings.poll_min_wait_seconds, settings.poll_max_wait_seconds, learned
            )
            if spent >= MAX_POLLS or not soon:
                wait = max(wait, planned)
            if settings.callback_base_url and submitted and spent < MAX_POLLS:
                # The upstream's callback wakes the loop; this wait is only the fallback poll.
                wait = max(wait, settings.callback_fallback_seconds)
            wait = min(math.ceil(wait), max(1, math.ceil(left + 1)))
        return {
            "job_id": job_id,
            "polls": polls,
            "faults": faults,
            "finished": finished,
            "wait_seconds": max(1, int(wait)),
            "news_at": job.get("news_at", 0),
            "error": None,
        }

    if job["status"] in jobs.TERMINAL:
        if job["status"] == jobs.CANCELLED:
            _cancel_upstream(job)
        return result(True)
    if time.time() >= job["deadline"]:
        if store.advance(job_id, jobs.TIMED_OUT, error=_timed_out(job)):
            _cancel_upstream(job)
        return result(True)

    client = xai_client()
    # While the xAI account is out of credits, the job waits; one call per probe interval tries.
    blocked = account().blocked()
    if blocked is not None and not account().may_probe():
        return result(False, account().pause_seconds(settings.poll_max_wait_seconds))
    if not job.get("xai_request_id"):
        return _submit(store, job, client, settings, result)
    # Status reads count against the account's limit like chat work: they share its limiter.
    limiter = chat_limiter()
    wait = limiter.try_acquire()
    if wait:
        return result(False, wait, soon=news_pending)
    try:
        status = client.status(job["kind"], job["xai_request_id"])
    except XaiAccountBlocked as exc:
        account().block(exc.status_code, exc.message)
        return result(False, account().pause_seconds(settings.poll_max_wait_seconds))
    except XaiRateLimited as exc:
        logger.info("status poll answered 429: polling again later")
        return result(False, max(rate_limited(exc, limiter), rate_limit_backoff(1)))
    except XaiRejected as exc:
        store.advance(job_id, jobs.FAILED, error={"code": exc.code, "message": exc.message})
        return result(True)
    if blocked is not None:
        account().resume()
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
    """Send the job to xAI, at most once: a create that may have been accepted is never sent again
    (the official xAI SDK's rule). A 429, a refusal, a blocked account or a connection never made
    are known outcomes; a timeout, a broken connection or a 5xx after sending is not — the job then
    fails ``submit_outcome_unknown`` rather than risk paying twice."""
    if job.get(SUBMIT_FLAG):
        return _submit_sent_before(store, job, result)
    body = json.loads(job["request"])
    limiter = None
    if job["kind"] == DEFERRED_CHAT:
        limiter = chat_limiter()
        wait = limiter.try_acquire(tokens=estimated_tokens(body))
    else:
        wait = RateLimiter(
            settings.limits_table, "video-submit", settings.video_requests_per_second
        ).try_acquire()
    if wait:
        return result(False, wait)
    if settings.callback_base_url:
        body["callback_url"] = callback_url(
            settings.callback_base_url,
            job["id"],
            secret(settings.callback_signing_secret),
            expires=int(job["deadline"]) + CALLBACK_GRACE_SECONDS,
        )
    if not store.claim(job["id"], SUBMIT_FLAG):
        return _submit_sent_before(store, job, result)
    try:
        request_id = client.submit(job["kind"], body)
    except XaiSubmitUnknown as exc:
        error = {
            "code": SUBMIT_UNKNOWN,
            "message": f"xAI may have accepted this job's request: {exc}. It was not sent again, so "
            "it is not paid twice; submit a new job to try again.",
        }
        store.advance(job["id"], jobs.FAILED, error=error)
        return result(True)
    except XaiAccountBlocked as exc:
        store.release(job["id"], SUBMIT_FLAG)
        account().block(exc.status_code, exc.message)
        return result(False, account().pause_seconds(settings.poll_max_wait_seconds))
    except XaiRateLimited as exc:
        store.release(job["id"], SUBMIT_FLAG)
        logger.info("submit answered 429: submitting again later")
        held = rate_limited(exc, limiter) if limiter else (exc.retry_after if exc.stated else 0.0)
        return result(False, max(held, rate_limit_backoff(1)))
    except XaiUnavailable:
        store.release(job["id"], SUBMIT_FLAG)  # it never reached xAI: the Retry may send it again
        raise
    except XaiRejected as exc:
        store.advance(job["id"], jobs.FAILED, error={"code": exc.code, "message": exc.message})
        return result(True)
    account().resume()
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


def _submit_sent_before(store: jobs.JobStore, job: dict, result) -> dict:
    """Another attempt of this Poll sent the submit: wait for its answer while it may still come;
    past that, its outcome is unknown and the job fails rather than send it twice."""
    current = store.get(job["id"]) or job
    if current["status"] != jobs.PENDING or current.get("xai_request_id"):
        job.update(current)
        return result(current["status"] in jobs.TERMINAL, submitted=True)
    sent_ago = time.time() - current.get(SUBMIT_FLAG, time.time())
    if sent_ago < SUBMIT_GRACE_SECONDS:
        return result(False, SUBMIT_GRACE_SECONDS - sent_ago)
    error = {
        "code": SUBMIT_UNKNOWN,
        "message": "an earlier attempt sent this job to xAI and ended without its answer; xAI may "
        "have accepted it. It was not sent again, so it is not paid twice; submit a new job to try again.",
    }
    store.advance(job["id"], jobs.FAILED, error=error)
    return result(True)


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


def park(job_id: str, token: str, seen_news: int = 0) -> dict:
    """Store the wake token, unless the job ended or has news that Poll did not see (then the loop
    polls again after a short pause). News Poll saw but could not act on waits for its timer."""
    store = jobs.JobStore(get_settings().jobs_table)
    if not store.park(job_id, token, seen_news):
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
        _record_step_error(store, job_id, error)
    job = store.get(job_id)
    if job is None:
        raise jobs.JobNotFound(job_id)
    logger.append_keys(tenant=job["tenant"])
    if job["status"] not in jobs.TERMINAL:
        raise RuntimeError(f"job {job_id} reached Finish while {job['status']}")
    event_id = notify.event_id(job_id)
    message = {"id": event_id, "event": "job.finished", "job": job_view(job, with_result=False)}
    notify.announce_once(
        store.table,
        {"id": job_id},
        lambda: notify.publish(
            settings.topic_arn,
            message,
            event="job.finished",
            event_id=event_id,
            kind=job["kind"],
            status=job["status"],
            tenant=job["tenant"],
        ),
    )
    if job.get("webhook_url") and not job.get(WEBHOOK_FLAG):
        # At least once: a Finish that dies between the delivery and this mark delivers again, with
        # the same event id (receivers drop repeats by it, as with Stripe's webhooks).
        try:
            notify.deliver_webhook(
                job["webhook_url"],
                message,
                event="job.finished",
                event_id=event_id,
                secrets=_signing_secrets(settings, job["tenant"]),
                allow_http=settings.allow_http_webhooks,
                allow_loopback=settings.allow_loopback_webhooks,
            )
        except notify.WebhookRefused as exc:
            logger.warning("webhook refused at delivery", extra={"reason": str(exc)})
            store.claim(job_id, "webhook_refused_at")
            return {"job_id": job_id, "status": job["status"]}
        store.claim(job_id, WEBHOOK_FLAG)
    return {"job_id": job_id, "status": job["status"]}


def _signing_secrets(settings, tenant: str) -> list[str]:
    """The secrets of the job's tenant its webhook is signed with (tenants.py)."""
    try:
        return TenantStore(settings.tenants_table).signing_secrets(tenant)
    except TenantError:
        # A job from before its tenant had a record: nobody holds a secret that could verify it.
        raise notify.WebhookRefused("the job's tenant has no record, so no webhook secret") from None


# What a tenant sees when the loop stopped on something of ours (a bug): the cause goes to the logs.
INTERNAL_ERROR = {"code": "internal_error", "message": "the job stopped on an internal error"}


def _record_step_error(store: jobs.JobStore, job_id: str, error: dict) -> None:
    logger.error("the job's loop failed", extra={"step_error": describe_step_error(error)})
    if error.get("Error") == "PlatformUnavailable":
        job = store.get(job_id)
        if job and time.time() >= job["deadline"]:
            store.advance(job_id, jobs.TIMED_OUT, error=_timed_out(job))
            return
        store.advance(
            job_id,
            jobs.FAILED,
            error={
                "code": "platform_unavailable",
                "message": "the job's loop could not run before its deadline",
            },
        )
        return
    store.advance(job_id, jobs.FAILED, error=INTERNAL_ERROR)


def _timed_out(job: dict) -> dict:
    return {
        "code": "timed_out",
        "message": f"the job did not finish within {job['deadline'] - job['created']} s",
    }


def describe_step_error(error: dict) -> dict:
    """A Step Functions error (Error, Cause) without stack traces, for the logs."""
    code = str(error.get("Error") or "internal_error")
    cause = str(error.get("Cause") or "")
    with contextlib.suppress(ValueError):
        parsed = json.loads(cause)
        # A Lambda error's Cause is JSON with a stack trace: keep only its message.
        cause = str(parsed.get("errorMessage") or "") if isinstance(parsed, dict) else cause
    return {"code": code, "message": cause[:1000] or "the job's loop failed"}
