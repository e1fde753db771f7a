"""The xAI HTTP client.

Accepts both the real xAI shapes and the seed documents' shapes (``request_id``/``id``,
``done``/``completed``, ``video.url``/``data[0].url``, ``pending``/``processing``) and reports
one normalised :class:`UpstreamStatus`. A 429 is never slept through here: it raises
:class:`XaiRateLimited` with the wait the server asked for, and the caller decides where to wait.

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
    def __init__(self, retry_after: float, limits: "RateLimitInfo"):
        super().__init__(f"xAI rate limit reached; retry after {retry_after:.1f} s")
        self.retry_after = retry_after
        self.limits = limits


class XaiUnavailable(XaiError):
    """5xx answers, timeouts or broken connections that outlasted the retries."""


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
    ):
        import httpx

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
        """Start a deferred request; returns xAI's request id."""
        reply = self._request("POST", _SUBMIT_PATHS[kind], json=body, operation="submit").json()
        request_id = reply.get("request_id") or reply.get("id")
        if not request_id:
            raise XaiUnavailable(f"xAI accepted the {kind} request but returned no request id")
        return str(request_id)

    def status(self, kind: str, request_id: str) -> UpstreamStatus:
        if kind == DEFERRED_CHAT:
            return self._deferred_chat_status(request_id)
        return _video_status(self._request("GET", f"/videos/{request_id}", operation="status").json())

    def cancel(self, kind: str, request_id: str) -> bool:
        """Ask xAI to cancel. xAI documents no cancel endpoint, so False is the usual answer."""
        if kind == DEFERRED_CHAT:
            return False
        try:
            self._request("POST", f"/videos/{request_id}/cancel", json={}, operation="cancel")
        except XaiRejected:
            return False
        return True

    def chat(self, body: dict, *, timeout: float | None = None) -> ChatReply:
        response = self._request("POST", "/chat/completions", json=body, timeout=timeout, operation="chat")
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
        response = self._request(
            "GET", f"/chat/deferred-completion/{request_id}", missing_ok=True, operation="status"
        )
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

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: float | None = None,
        missing_ok: bool = False,
        operation: str = "other",
    ) -> "httpx.Response":
        import httpx  # for its exception classes (already loaded: __init__ imported it)

        last_problem = ""
        for attempt in range(self.max_attempts):
            if attempt:
                logger.warning(
                    "xAI call retried",
                    extra={"operation": operation, "attempt": attempt + 1, "problem": last_problem},
                )
                time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt)))
            with timed(operation) as outcome:
                try:
                    kwargs = {"json": json} if json is not None else {}
                    if timeout is not None:
                        kwargs["timeout"] = timeout
                    response = self._http.request(method, path, **kwargs)
                except httpx.TimeoutException:
                    outcome[0] = "timeout"
                    last_problem = f"{method} {path} timed out"
                    continue
                except httpx.TransportError as exc:
                    outcome[0] = "connection_error"
                    last_problem = f"{method} {path} failed: {type(exc).__name__}"
                    continue
                outcome[0] = _outcome(response.status_code)
            if response.status_code == 429:
                raise XaiRateLimited(_retry_after(response), RateLimitInfo.from_headers(response.headers))
            if response.status_code >= 500:
                last_problem = f"{method} {path} answered {response.status_code}"
                continue
            if response.status_code == 404 and missing_ok:
                return response
            if response.status_code >= 400:
                message, code = _rejection(response)
                raise XaiRejected(response.status_code, message, code)
            return response
        raise XaiUnavailable(f"{last_problem} ({self.max_attempts} attempts)")


def _outcome(status_code: int) -> str:
    if status_code == 429:
        return "rate_limited"
    if status_code >= 500:
        return "server_error"
    if status_code >= 400:
        return "rejected"
    return "ok"


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
    if state in ("failed", "expired"):
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


def _rejection(response: "httpx.Response") -> tuple[str, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message") or body), str(code) if code is not None else None
    if isinstance(error, str):
        return error, body.get("code")
    return str(body)[:500], None


def _retry_after(response: "httpx.Response") -> float:
    header = response.headers.get("retry-after")
    if header:
        with contextlib.suppress(ValueError):
            return max(0.0, float(header))
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
    limits = RateLimitInfo.from_headers(response.headers)
    waits = [w for w in (limits.reset_requests, limits.reset_tokens) if w]
    return max(waits) if waits else 1.0


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
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
