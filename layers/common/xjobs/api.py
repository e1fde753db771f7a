"""HTTP routes for jobs, and the one place that maps errors to HTTP answers."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.router import Router

from . import batches, jobs
from .loop import wake
from .models import BadRequest, parse_job_request
from .settings import get_settings
from .submission import IdempotencyKeyReused, RequestInProgress, submit_job
from .views import job_view
from .xai import DEFERRED_CHAT, VIDEO_EDIT, VIDEO_GENERATION

logger = Logger(child=True)
router = Router()

MAX_PAGE = 100


class Forbidden(PermissionError):
    pass


class TooManyCallbacks(RuntimeError):
    """A job's callbacks came faster, or more often, than a job's callbacks may."""


def _error(status: int, code: str, message: str) -> Response:
    return Response(status, "application/json", {"error": {"code": code, "message": message}})


def tenant_of(app) -> str:
    tenant = (app.current_event.request_context.identity.api_key_id or "").strip()
    if not tenant:
        raise Forbidden("this API needs an API key")
    return tenant


def page_limit(params: dict) -> int:
    try:
        limit = int(params.get("limit", 20))
    except ValueError:
        raise BadRequest("parameter 'limit': must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"parameter 'limit': must be between 1 and {MAX_PAGE}")
    return limit


def list_page(data: list[dict], has_more: bool) -> dict:
    """A page of a list route, in OpenAI's list shape."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def _store() -> jobs.JobStore:
    return jobs.JobStore(get_settings().jobs_table)


def _submit(kind: str) -> Response:
    event = router.current_event
    request = parse_job_request(kind, event.body)
    key = event.headers.get("Idempotency-Key") or event.headers.get("idempotency-key")
    job = submit_job(tenant_of(router), kind, request, key, router.lambda_context)
    return Response(202, "application/json", job)


@router.post("/v1/videos/generations")
def create_video():
    return _submit(VIDEO_GENERATION)


@router.post("/v1/videos/edits")
def edit_video():
    return _submit(VIDEO_EDIT)


@router.post("/v1/chat/completions")
def create_deferred_chat():
    return _submit(DEFERRED_CHAT)


@router.get("/v1/jobs/<job_id>")
@router.get("/v1/videos/<job_id>")
def get_job(job_id: str):
    return job_view(_store().get_for_tenant(job_id, tenant_of(router)))


@router.get("/v1/jobs")
def list_jobs():
    params = router.current_event.query_string_parameters or {}
    status = params.get("status")
    if status and status not in jobs.STATUSES:
        raise BadRequest(f"parameter 'status': must be one of {', '.join(jobs.STATUSES)}")
    found, has_more = _store().list(
        tenant_of(router), status=status, limit=page_limit(params), after=params.get("after")
    )
    return list_page([job_view(job, with_result=False) for job in found], has_more)


@router.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = _store().cancel(job_id, tenant_of(router))
    wake(job.get("wake_token"))
    logger.info("job cancelled", extra={"job_id": job_id})
    return job_view(job)


def register_error_handlers(app: APIGatewayRestResolver) -> None:
    @app.exception_handler(BadRequest)
    def bad_request(exc: BadRequest):
        return _error(400, "invalid_request", str(exc))

    @app.exception_handler(Forbidden)
    def forbidden(exc: Forbidden):
        return _error(403, "forbidden", str(exc))

    @app.exception_handler(jobs.JobNotFound)
    def not_found(exc: jobs.JobNotFound):
        return _error(404, "not_found", f"no job {exc.args[0]}")

    @app.exception_handler(batches.BatchNotFound)
    def batch_not_found(exc: batches.BatchNotFound):
        return _error(404, "not_found", f"no batch {exc.args[0]}")

    @app.exception_handler([jobs.JobConflict, batches.BatchConflict])
    def conflict(exc: Exception):
        return _error(409, "conflict", str(exc))

    @app.exception_handler(IdempotencyKeyReused)
    def key_reused(exc: IdempotencyKeyReused):
        return _error(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request")

    @app.exception_handler(RequestInProgress)
    def in_progress(exc: RequestInProgress):
        return _error(409, "request_in_progress", "a request with this Idempotency-Key is still in progress")

    @app.exception_handler(TooManyCallbacks)
    def too_many_callbacks(exc: TooManyCallbacks):
        return _error(429, "too_many_callbacks", str(exc))

    @app.not_found
    def no_route(exc):
        return _error(404, "not_found", "no such route")
