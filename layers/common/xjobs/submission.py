"""Accepting a job: record it, start its state machine execution, answer with its view.

The call to xAI happens in the job's first Poll step, not here: accepting stays fast, a video burst
queues behind the account's rate limit without holding API calls open, and an xAI outage delays
accepted jobs instead of losing them.

Powertools' idempotency machinery (which imports boto3) is imported only when a request carries an
Idempotency-Key, so the API's cold start does not pay for it; its errors become this module's own.
"""

import json
import time
from functools import cache

from . import aws, jobs
from .ids import new_id
from .models import BadRequest, upstream_body
from .notify import check_webhook_url
from .observability import logger, metric
from .settings import get_settings
from .views import job_view

IDEMPOTENCY_SECONDS = 24 * 3600


class IdempotencyKeyReused(ValueError):
    """The Idempotency-Key was first used with a different request."""


class RequestInProgress(RuntimeError):
    """The first request with this Idempotency-Key has not finished yet."""


def submit_job(tenant: str, kind: str, request, idempotency_key: str | None, lambda_context=None) -> dict:
    settings = get_settings()
    timeout = request.timeout_seconds or settings.job_timeout_default_seconds
    if timeout > settings.job_timeout_max_seconds:
        raise BadRequest(f"field 'timeout_seconds': must be at most {settings.job_timeout_max_seconds}")
    if request.webhook_url:
        problem = check_webhook_url(
            request.webhook_url,
            allow_http=settings.allow_http_webhooks,
            allow_loopback=settings.allow_loopback_webhooks,
        )
        if problem:
            raise BadRequest(f"field 'webhook_url': {problem}")
    submission = {
        "tenant": tenant,
        "kind": kind,
        "body": upstream_body(request),
        "webhook_url": request.webhook_url,
        "timeout_seconds": timeout,
    }
    if not idempotency_key:
        return _create_job(submission=submission)
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    create, config = _idempotent_create_job()
    if lambda_context is not None:
        config.register_lambda_context(lambda_context)
    try:
        return create(submission={**submission, "idempotency_key": idempotency_key})
    except IdempotencyValidationError:
        raise IdempotencyKeyReused(idempotency_key) from None
    except IdempotencyAlreadyInProgressError:
        raise RequestInProgress(idempotency_key) from None


def execution_input(job_id: str) -> str:
    """The input of a job's state machine execution: a new loop, with its poll and fault budgets unspent."""
    return json.dumps({"job_id": job_id, "polls": 0, "faults": 0})


def _create_job(*, submission: dict) -> dict:
    settings = get_settings()
    store = jobs.JobStore(settings.jobs_table)
    now = int(time.time())
    job = {
        "id": new_id("job"),
        "tenant": submission["tenant"],
        "kind": submission["kind"],
        "model": submission["body"].get("model"),
        "status": jobs.PENDING,
        "created": now,
        "updated": now,
        "deadline": now + submission["timeout_seconds"],
        "attempts": 0,
        # Kept as a JSON string: DynamoDB refuses floats (temperature) and empty strings in maps.
        "request": json.dumps(submission["body"], separators=(",", ":")),
        "expires_at": now + jobs.RETENTION_SECONDS,
    }
    if submission["webhook_url"]:
        job["webhook_url"] = submission["webhook_url"]
    store.create(job)
    try:
        aws.client("stepfunctions").start_execution(
            stateMachineArn=settings.state_machine_arn,
            name=job["id"],
            input=execution_input(job["id"]),
        )
    except Exception:
        store.delete(job["id"])  # a job without an execution would never move: take it back
        raise
    logger.info("job submitted", extra={"job_id": job["id"], "tenant": job["tenant"], "kind": job["kind"]})
    metric("JobsSubmitted", Kind=job["kind"])
    return job_view(job)


@cache
def _idempotent_create_job():
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    settings = get_settings()
    persistence = DynamoDBPersistenceLayer(
        table_name=settings.idempotency_table, boto3_client=aws.client("dynamodb")
    )
    config = IdempotencyConfig(
        event_key_jmespath="[tenant, idempotency_key]",
        payload_validation_jmespath="[kind, body, webhook_url, timeout_seconds]",
        expires_after_seconds=IDEMPOTENCY_SECONDS,
    )
    create = idempotent_function(
        _create_job,
        data_keyword_argument="submission",
        persistence_store=persistence,
        config=config,
        key_prefix="create_job",
    )
    return create, config
