"""HTTP routes for jobs, and the one place that maps errors to HTTP answers."""

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.router import Router

from . import batches, jobs
from .files import FileNotFound
from .loop import wake
from .models import BadRequest, parse_job_request
from .observability import logger
from .settings import get_settings
from .submission import IdempotencyKeyReused, RequestInProgress, submit_job
from .tenants import TenantError
from .upstream import account
from .views import job_view
from .xai import DEFERRED_CHAT, VIDEO_EDIT, VIDEO_GENERATION

router = Router()

MAX_PAGE = 100


class Unauthenticated(PermissionError):
    pass


class TooManyCallbacks(RuntimeError):
    """A job's callbacks came faster, or more often, than a job's callbacks may."""


def error(
    status: int, code: str | None, message: str, *, param: str | None = None, kind: str = ""
) -> Response:
    """An error in OpenAI's shape, so the openai SDK raises its typed error with our message and code."""
    kind = kind or ("server_error" if status >= 500 else "invalid_request_error")
    # Every error answer of the API leaves this one log line.
    logger.info("request refused", extra={"status_code": status, "code": code, "reason": message})
    return Response(
        status,
        "application/json",
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
    )


def tenant_of(app) -> str:
    """The caller's tenant, as the API's authorizer put it in the request context."""
    authorizer = app.current_event.raw_event.get("requestContext", {}).get("authorizer") or {}
    tenant = str(authorizer.get("tenant") or "").strip()
    if not tenant:
        raise Unauthenticated("this API needs an API key: send Authorization: Bearer <key>")
    return tenant


def idempotency_key_of(app) -> str | None:
    """The request's Idempotency-Key header, if it has one."""
    headers = app.current_event.headers
    return headers.get("Idempotency-Key") or headers.get("idempotency-key") or None


def paused(view: dict, running: bool) -> dict:
    """A running job or batch says why it waits while the xAI account is blocked (account.py)."""
    block = account().blocked() if running else None
    return view | block.view() if block else view


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
    request = parse_job_request(kind, router.current_event.body)
    job = submit_job(tenant_of(router), kind, request, idempotency_key_of(router), router.lambda_context)
    if kind == DEFERRED_CHAT:
        job["request_id"] = job["id"]  # what xAI's deferred chat answers: the id to read the result with
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


@router.get("/v1/chat/deferred-completion/<request_id>")
def get_deferred_completion(request_id: str):
    """xAI's route for a deferred chat result: 202 with no body while the job runs, 200 with the chat
    completion once done. Unlike xAI's, it can be read again, until the job expires."""
    job = _store().get_for_tenant(request_id, tenant_of(router))
    if job["kind"] != DEFERRED_CHAT:
        raise jobs.JobNotFound(request_id)
    if job["status"] in jobs.ACTIVE:
        return Response(202, "application/json", "")
    view = job_view(job)
    if job["status"] == jobs.COMPLETED and view["result"] is not None:
        return view["result"]
    problem = view.get("error") or {}
    return error(
        410,
        problem.get("code") or job["status"],
        f"the deferred completion ended {job['status']} without a result"
        + (f": {problem['message']}" if problem.get("message") else ""),
    )


@router.get("/v1/jobs/<job_id>")
@router.get("/v1/videos/<job_id>")
def get_job(job_id: str):
    job = _store().get_for_tenant(job_id, tenant_of(router))
    return paused(job_view(job), job["status"] not in jobs.TERMINAL)


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
    """Every error the API answers, in OpenAI's shape and with the status OpenAI uses for it."""

    @app.exception_handler(BadRequest)
    def bad_request(exc: BadRequest):
        return error(400, "invalid_request", str(exc), param=exc.param)

    @app.exception_handler(Unauthenticated)
    def unauthenticated(exc: Unauthenticated):
        return error(401, "invalid_api_key", str(exc))

    @app.exception_handler(jobs.JobNotFound)
    def not_found(exc: jobs.JobNotFound):
        return error(404, "not_found", f"no job {exc.args[0]}")

    @app.exception_handler(batches.BatchNotFound)
    def batch_not_found(exc: batches.BatchNotFound):
        return error(404, "not_found", f"no batch {exc.args[0]}")

    @app.exception_handler(TenantError)
    def no_tenant(exc: TenantError):
        return error(404, "not_found", str(exc))

    @app.exception_handler(FileNotFound)
    def file_not_found(exc: FileNotFound):
        return error(404, "not_found", f"no file {exc.args[0]}")

    @app.exception_handler([jobs.JobConflict, batches.BatchConflict])
    def conflict(exc: Exception):
        return error(409, "conflict", str(exc))

    @app.exception_handler(IdempotencyKeyReused)
    def key_reused(exc: IdempotencyKeyReused):
        return error(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request")

    @app.exception_handler(RequestInProgress)
    def in_progress(exc: RequestInProgress):
        return error(409, "request_in_progress", "a request with this Idempotency-Key is still in progress")

    @app.exception_handler(TooManyCallbacks)
    def too_many_callbacks(exc: TooManyCallbacks):
        return error(429, "too_many_callbacks", str(exc), kind="rate_limit_error")

    @app.not_found
    def no_route(exc):
        return error(404, "unknown_url", "no such route")
