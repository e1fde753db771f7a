"""The xAI HTTP client.

Accepts both the real xAI shapes and the seed documents' shapes (``request_id``/``id``,
``done``/``completed``, ``video.url``/``data[0].url``, ``pending``/``processing``) and reports
one normalised :class:`UpstreamStatus`. A pending video answers 202 with or without a body; a
moderated one answers its poll with a 400 that is still billed (reported as a failed status with
the code ``content_moderated``, xAI's message and cost). xAI's error bodies are flat
(``{"code": <gRPC sentence>, "error": <text>}``) and a 422 may be plain text. A 429 is never slept
through here: it raises :class:`XaiRateLimited` with the wait the server asked for, if it did, and
the caller decides where to wait.

httpx is imported where requests are made, not at module import: the API imports this module only
for its constants, and a cold start should not pay for an HTTP client it does not use.
"""

import contextlib
import email.utils
import math
import random
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .observability import logger, timed

if TYPE_CHECKING:
    import httpx

VIDEO_GENERATION = "video.generation"
VIDEO_EDIT = "video.edit"
DEFERRED_CHAT = "chat.completion"
KINDS = (VIDEO_GENERATION, VIDEO_EDIT, DEFERRED_CHAT)

_SUBMIT_PATHS = {
    VIDEO_GENERATION: "/videos/generations",
    VIDEO_EDIT: "/videos/edits",
    DEFERRED_CHAT: "/chat/completions",
}
_PENDING = {"pending", "queued", "processing", "in_progress", "running"}
MODERATED = "content_moderated"
_DONE = {"done", "completed", "succeeded", "success"}
_FAILED = {"failed", "error", "cancelled", "canceled"}


class XaiError(Exception):
    """Base of every error this client raises. Messages never contain the API key."""


class XaiRejected(XaiError):
    """xAI refused the request itself (4xx other than 429): retrying cannot help."""

    def __init__(self, status_code: int, message: str, code: str | None = None):
        super().__init__(f"xAI answered {status_code}: {message}")
        self.status_code = status_code
        self.code = code or f"http_{status_code}"
        self.message = message


class XaiRateLimited(XaiError):
    """A 429. ``retry_after`` is the wait xAI stated (Retry-After, x-ratelimit-reset-*) or, when it
    stated none (xAI's usual answer), ``DEFAULT_RETRY_AFTER`` with ``stated`` False."""

    def __init__(self, retry_after: float, limits: "RateLimitInfo", stated: bool = True):
        super().__init__(f"xAI rate limit reached; retry after {retry_after:.1f} s")
        self.retry_after = retry_after
        self.limits = limits
        self.stated = stated


class XaiUnavailable(XaiError):
    """5xx answers, timeouts or broken connections that outlasted the retries."""


class XaiSubmitUnknown(XaiError):
    """A create (a submit) was sent but got no usable answer (a timeout, a broken connection, a 5xx):
    xAI may have accepted it, and it documents no idempotency key, so sending it again could pay twice."""


class XaiAccountBlocked(XaiError):
    """The account is out of credits or over its spending limit (a 429, or a 403 in newer answers):
    nothing goes through until the operator pays, so this is a pause, not a failure of the request."""

    def __init__(self, status_code: int, message: str):
        super().__init__(f"xAI answered {status_code}: {message}")
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class RateLimitInfo:
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None

    @classmethod
    def from_headers(cls, headers: "httpx.Headers") -> "RateLimitInfo":
        return cls(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            reset_requests=_duration(headers.get("x-ratelimit-reset-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_tokens=_duration(headers.get("x-ratelimit-reset-tokens")),
        )


@dataclass(frozen=True)
class UpstreamStatus:
    state: Literal["pending", "done", "failed", "expired"]
    progress: int | None = None
    video_url: str | None = None
    result: dict | None = None
    error: dict | None = None


@dataclass(frozen=True)
class ChatReply:
    status_code: int
    body: dict
    limits: RateLimitInfo


class XaiClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 15.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        video_cancel: bool = False,
    ):
        import httpx

        self.video_cancel = video_cancel
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    def close(self) -> None:
        self._http.close()

    def submit(self, kind: str, body: dict) -> str:
        """Start a deferred request; returns xAI's request id. Raises :class:`XaiSubmitUnknown` when it
        may or may not have been accepted: a create is retried only when it never left (see _request)."""
        reply = self._request("POST", _SUBMIT_PATHS[kind], json=body, create=True).json()
        request_id = reply.get("request_id") or reply.get("id")
        if not request_id:
            raise XaiUnavailable(f"xAI accepted the {kind} request but returned no request id")
        return str(request_id)

    def status(self, kind: str, request_id: str) -> UpstreamStatus:
        if kind == DEFERRED_CHAT:
            return self._deferred_chat_status(request_id)
        response = self._request("GET", f"/videos/{request_id}", moderation_ok=True)
        if response.status_code == 400:
            # Only a moderated video gets here (see _request): the poll's 400 ends it, billed.
            message, _ = _rejection(response)
            error: dict[str, Any] = {"code": MODERATED, "message": message}
            cost = _body(response).get("usage", {}).get("cost_in_usd_ticks")
            if isinstance(cost, int):
                error["cost_in_usd_ticks"] = cost
            return UpstreamStatus("failed", error=error)
        body = _body(response)
        if response.status_code == 202 and not body.get("status"):
            body["status"] = "pending"  # a 202 is pending, with or without a body
        return _video_status(body)

    def cancel(self, kind: str, request_id: str) -> bool:
        """Ask the upstream to stop a video. xAI has no cancel route: unless the client was told the
        upstream has one (``video_cancel``), nothing is called and the answer is False."""
        if kind == DEFERRED_CHAT or not self.video_cancel:
            return False
        try:
            self._request("POST", f"/videos/{request_id}/cancel", json={})
        except XaiRejected:
            return False
        return True

    def chat(self, body: dict, *, timeout: float | None = None) -> ChatReply:
        response = self._request("POST", "/chat/completions", json=body, timeout=timeout)
        return ChatReply(response.status_code, response.json(), RateLimitInfo.from_headers(response.headers))

    def download(self, url: str, sink) -> int:
        """Stream a media URL into a binary file object; returns the bytes written."""
        import httpx

        written = 0
        with (
            timed("download"),
            httpx.stream("GET", url, timeout=httpx.Timeout(60.0, connect=5.0), follow_redirects=True) as r,
        ):
            if r.status_code != 200:
                raise XaiUnavailable(f"download of the result answered {r.status_code}")
            for chunk in r.iter_bytes(1 << 20):
                sink.write(chunk)
                written += len(chunk)
        return written

    def _deferred_chat_status(self, request_id: str) -> UpstreamStatus:
        response = self._request("GET", f"/chat/deferred-completion/{request_id}", missing_ok=True)
        if response.status_code == 404:
            # A deferred result is handed out once and kept 24 h; a 404 means it is gone.
            return UpstreamStatus(
                "expired", error={"code": "expired", "message": "xAI no longer has the result"}
            )
        if response.status_code == 202 or not response.content:
            return UpstreamStatus("pending")
        body = response.json()
        if "choices" in body or "output" in body:
            return UpstreamStatus("done", progress=100, result=body)
        state = _state(body.get("status"))
        if state == "done" and isinstance(body.get("result"), dict):
            return UpstreamStatus("done", progress=100, result=body["result"])
        return UpstreamStatus(state, error=_error(body) if state in ("failed", "expired") else None)

    def _send(self, method: str, path: str, kwargs: dict, operation: str) -> "httpx.Response":
        """One HTTP request, counted in XaiCalls and XaiLatency by operation and outcome."""
        import httpx

        with timed(operation) as outcome:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException:
                outcome[0] = "timeout"
                raise
            except httpx.TransportError:
                outcome[0] = "connection_error"
                raise
            outcome[0] = _outcome(response)
            return response

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
        missing_ok: bool = False,
        create: bool = False,
        moderation_ok: bool = False,
    ) -> "httpx.Response":
        """One call, retried as xAI's official SDK retries: a 429 is raised for the caller to wait
        out; 5xx answers, timeouts and broken connections are retried, except for a ``create``, which
        may already have been accepted — it is retried only when the connection was never made."""
        import httpx  # for its exception classes (already loaded: __init__ imported it)

        last_problem = ""
        operation = _operation(method, path, create)
        for attempt in range(self.max_attempts):
            if attempt:
                logger.warning(
                    "xAI call retried",
                    extra={"operation": operation, "attempt": attempt + 1, "problem": last_problem},
                )
                time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt)))
            try:
                kwargs = {"json": json} if json is not None else {}
                if timeout is not None:
                    kwargs["timeout"] = timeout
                response = self._send(method, path, kwargs, operation)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                last_problem = f"{method} {path} could not connect: {type(exc).__name__}"  # nothing sent
                continue
            except httpx.TimeoutException:
                last_problem = f"{method} {path} timed out"
                if create:
                    raise XaiSubmitUnknown(f"{last_problem} after the request was sent") from None
                continue
            except httpx.TransportError as exc:
                last_problem = f"{method} {path} failed: {type(exc).__name__}"
                if create:
                    raise XaiSubmitUnknown(f"{last_problem} after the request was sent") from None
                continue
            blocked = _account_blocked(response)
            if blocked:
                raise XaiAccountBlocked(response.status_code, blocked)
            if response.status_code == 429:
                stated = _retry_after(response)
                raise XaiRateLimited(
                    DEFAULT_RETRY_AFTER if stated is None else stated,
                    RateLimitInfo.from_headers(response.headers),
                    stated=stated is not None,
                )
            if response.status_code >= 500:
                last_problem = f"{method} {path} answered {response.status_code}"
                if create:
                    raise XaiSubmitUnknown(last_problem)
                continue
            if response.status_code == 404 and missing_ok:
                return response
            if response.status_code == 400 and moderation_ok and _is_moderation(response):
                return response
            if response.status_code >= 400:
                message, code = _rejection(response)
                raise XaiRejected(response.status_code, message, code)
            return response
        raise XaiUnavailable(f"{last_problem} ({self.max_attempts} attempts)")


def _operation(method: str, path: str, create: bool) -> str:
    """What a call does, as the XaiCalls metric names it."""
    if create:
        return "submit"
    if path == "/chat/completions":
        return "chat"
    if path.endswith("/cancel"):
        return "cancel"
    return "status" if method == "GET" else "other"


def _outcome(response: "httpx.Response") -> str:
    if _account_blocked(response):
        return "account_blocked"
    if response.status_code == 429:
        return "rate_limited"
    if response.status_code >= 500:
        return "server_error"
    if response.status_code >= 400:
        return "rejected"
    return "ok"


def _body(response: "httpx.Response") -> dict:
    """The JSON object in an answer, or {} when it has none (xAI's 202s are often empty)."""
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_moderation(response: "httpx.Response") -> bool:
    message, _ = _rejection(response)
    return "moderation" in message.lower()


def _video_status(body: dict) -> UpstreamStatus:
    state = _state(body.get("status"))
    url = (body.get("video") or {}).get("url")
    if not url and body.get("data"):
        url = body["data"][0].get("url")
    progress = body.get("progress")
    if state == "done":
        if not url:
            return UpstreamStatus(
                "failed", error={"code": "moderated", "message": "xAI returned no video (moderation)"}
            )
        return UpstreamStatus("done", progress=100, video_url=url)
    if state == "expired":
        return UpstreamStatus(
            "expired",
            error={
                "code": "expired",
                "message": "xAI reports the request expired: it ran, but its result is no longer available",
            },
        )
    if state == "failed":
        return UpstreamStatus(state, progress=progress, error=_error(body))
    return UpstreamStatus("pending", progress=progress if isinstance(progress, int) else None)


def _state(status: Any) -> Literal["pending", "done", "failed", "expired"]:
    status = str(status or "pending").lower()
    if status in _DONE:
        return "done"
    if status in _FAILED:
        return "failed"
    if status == "expired":
        return "expired"
    return "pending"


def _error(body: dict) -> dict:
    error = body.get("error")
    if isinstance(error, dict):
        return {"code": str(error.get("code") or "xai_error"), "message": str(error.get("message") or "")}
    if isinstance(error, str):
        return {"code": "xai_error", "message": error}
    status = body.get("status", "failed")
    return {"code": str(status), "message": f"xAI reported the request {status}"}


# xAI's error bodies are flat, {"code": <gRPC status sentence>, "error": <text>}; the sentence becomes
# the gRPC status name, which is what a caller can branch on.
_GRPC_NAMES = {
    "client specified an invalid argument": "invalid_argument",
    "the request does not have valid authentication credentials": "unauthenticated",
    "the caller does not have permission to execute the specified operation": "permission_denied",
    "some requested entity was not found": "not_found",
    "some resource has been exhausted": "resource_exhausted",
    "the system is not in a state required for the operation's execution": "failed_precondition",
    "operation is not implemented or not supported": "unimplemented",
    "internal error": "internal",
    "the service is currently unavailable": "unavailable",
    "deadline expired before operation could complete": "deadline_exceeded",
}


def _rejection(response: "httpx.Response") -> tuple[str, str | None]:
    """(message, code) of an error answer: xAI's flat body, an OpenAI-style nested one, or plain text
    (xAI answers a body it cannot deserialize with a plain-text 422)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message") or body), str(code) if code is not None else None
    if isinstance(error, str):
        code = body.get("code")
        if isinstance(code, str):
            code = _GRPC_NAMES.get(code.strip().rstrip(".").lower(), code)
        return error, str(code) if code is not None else None
    return str(body)[:500], None


DEFAULT_RETRY_AFTER = 1.0
_BILLING = re.compile(r"credits|spending limit", re.IGNORECASE)


def _account_blocked(response: "httpx.Response") -> str | None:
    """xAI's text when a 429 or 403 says the account is out of credits or over its spending limit."""
    if response.status_code not in (403, 429):
        return None
    if not _BILLING.search(response.text[:4000]):
        return None
    return _rejection(response)[0]


def _retry_after(response: "httpx.Response") -> float | None:
    """The wait xAI stated, if any (it usually states none)."""
    header = response.headers.get("retry-after")
    if header:
        with contextlib.suppress(ValueError):
            seconds = float(header)
            if math.isfinite(seconds):  # "inf" or "nan" would break every wait computed from it
                return max(0.0, seconds)
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    limits = RateLimitInfo.from_headers(response.headers)
    waits = [w for w in (limits.reset_requests, limits.reset_tokens) if w and math.isfinite(w)]
    return max(waits) if waits else None


RATE_LIMIT_BACKOFF_CAP = 30.0


def rate_limit_backoff(retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, ...) of a 429 that stated no wait: from about a
    second, doubling, up to 30 s, with jitter — as xAI's official SDK backs off."""
    return min(RATE_LIMIT_BACKOFF_CAP, 2 ** min(max(0, retry - 1), 8) * random.uniform(0.75, 1.25))


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except (ValueError, OverflowError):
        return None


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def _duration(value: str | None) -> float | None:
    """Parse '1.5s', '20ms', '1m30s' or a bare number of seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = _DURATION_PART.findall(value)
    return sum(float(n) * scale[u] for n, u in parts) if parts else None


def ceil_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
