"""The upstream's completion callbacks (deployed only when CallbackBaseUrl is set, on a function of
their own). A callback is a hint, never trusted for the result: it records the news on the job and
wakes its parked loop, which asks xAI.

A callback must carry the job's token (HMAC with the callback secret, bound to the job and expiring
an hour after its deadline, see notify.callback_token) and name an xAI request (`request_id`, or `id`)
in its body: the job's, once the job has one. (The token is made before the submit, when the request
id is not known yet, so a callback that beats the submit's answer names a request the job cannot
check: it only makes the loop poll sooner.) A job takes one callback a second and CALLBACKS_PER_JOB in
all.
"""

import json

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import Router

from . import jobs
from .api import TooManyCallbacks
from .loop import wake
from .models import BadRequest
from .notify import check_callback_token
from .settings import get_settings
from .upstream import secret

logger = Logger(child=True)
router = Router()

CALLBACKS_PER_JOB = 20
CALLBACK_INTERVAL_MS = 1000


@router.post("/v1/callbacks/xai/<job_id>")
def upstream_callback(job_id: str):
    token = (router.current_event.query_string_parameters or {}).get("token", "")
    settings = get_settings()
    if not token or not check_callback_token(secret(settings.callback_signing_secret), job_id, token):
        raise jobs.JobNotFound(job_id)
    store = jobs.JobStore(settings.jobs_table)
    job = store.get(job_id)
    if job is None:
        raise jobs.JobNotFound(job_id)
    named = _request_id(router.current_event.body)
    if not named:
        raise BadRequest("field 'request_id': a callback names the xAI request it is about")
    if job.get("xai_request_id") and named != job["xai_request_id"]:
        logger.warning("callback for another xAI request", extra={"job_id": job_id})
        raise jobs.JobNotFound(job_id)
    try:
        job = store.note_news(job_id, min_interval_ms=CALLBACK_INTERVAL_MS, most=CALLBACKS_PER_JOB)
    except jobs.NewsLimited:
        raise TooManyCallbacks(
            f"job {job_id} takes one callback a second, {CALLBACKS_PER_JOB} in all"
        ) from None
    if job:
        wake(job.get("wake_token"))
    return Response(202, "application/json", {"id": job_id, "accepted": True})


def _request_id(body: str | None) -> str | None:
    """The xAI request the callback names (`request_id`, or `id`), if its body says."""
    try:
        data = json.loads(body or "{}")
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    named = data.get("request_id") or data.get("id")
    return named if isinstance(named, str) else None
