"""A local HTTP server that speaks the xAI REST API, for tests and benchmarks.

By default it answers as xAI does (its OpenAPI spec, its official SDK, live captures): chat completions
(also deferred), the Responses API, video generations and edits with status polling, per-second rate
limits answered with a bare 429 (no Retry-After, no x-ratelimit-*), flat error bodies
``{"code": "<gRPC status sentence>", "error": "<text>"}``, a "credits exhausted" mode, latency
distributions and injected faults. Conveniences xAI does not offer (rate-limit headers, Retry-After,
a video cancel route, upstream callbacks, the seed documents' shapes) are SimulatorConfig options,
off by default. It logs every /v1 call so tests can count them, with where the call broke xAI's
contract (local/xai_contract: the request against xAI's schemas, the answer's route, headers and
body); `/sim/*` endpoints let another process read the log and change the behaviour. Standard
library and jsonschema only.

    python -m local.xai_simulator --port 8787 --api-key sim-key --video-duration 2 --rpm 600
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import heapq
import json
import math
import random
import re
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import xai_contract

# Recorded as CallRecord.tenant_header, so tests can check which tenant a call was made for.
TENANT_HEADER = "X-Xjobs-Tenant"

DEFAULT_VIDEO_SECONDS = 8
USD_TICKS = 10**10
VIDEO_USD_PER_SECOND = {"480p": 0.05, "720p": 0.07, "1080p": 0.10}
CHAT_USD_PER_TOKEN = (0.20 / 10**6, 0.50 / 10**6)  # prompt, completion
VIDEO_MODELS = ("grok-imagine-video", "grok-imagine-video-1.5")
HD_VIDEO_MODELS = ("grok-imagine-video-1.5",)  # the only one rendering 1080p
ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3")
RESOLUTIONS = ("480p", "720p", "1080p")
MODERATED_MESSAGE = "Generated video rejected by content moderation."


@dataclass
class SimulatorConfig:
    api_key: str = ""
    chat_latency_median: float = 0.0
    chat_latency_sigma: float = 0.3
    video_duration_median: float = 2.0
    video_duration_sigma: float = 0.5
    video_submit_latency: float = 0.0  # seconds a video submit takes to be answered
    deferred_chat_duration: float = 0.5
    # How a video ends: failed (200, status "failed"), moderated (the poll answers 400, billed),
    # expired (200, status "expired"), else done.
    video_failure_rate: float = 0.0
    video_moderation_rate: float = 0.0
    video_expired_rate: float = 0.0
    # A pending video answers 202 with {"status": "pending", "progress": N} this often, else empty.
    video_pending_body_rate: float = 0.5
    # xAI's limits are given per minute but enforced per second (RPM/60, TPM/60): no minute-sized burst.
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    video_requests_per_second: int = 1
    # Every /v1 call answers the billing error while on; its status is 429 (older captures) or 403.
    credits_exhausted: bool = False
    credits_exhausted_status: int = 429
    error_500_rate: float = 0.0
    error_503_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    random_seed: int | None = None
    # Extensions: behaviour xAI does not have, for tests and benchmarks that ask for it explicitly.
    rate_limit_headers: bool = False  # x-ratelimit-{limit,remaining,reset}-{requests,tokens}
    retry_after: bool = False  # Retry-After on rate-limit 429s
    video_cancel: bool = False  # POST /v1/videos/{id}/cancel
    callbacks: bool = False  # POST {"request_id", "status"} to a request's callback_url when it ends
    seed_shapes: bool = False  # the seed documents' OpenAI-style video shapes


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(SimulatorConfig))
EXTENSIONS = ("rate_limit_headers", "retry_after", "video_cancel", "callbacks", "seed_shapes")


@dataclass(frozen=True)
class CallRecord:
    time: float
    method: str
    path: str
    status: int  # 0 = connection reset without an answer
    body: dict | None
    request_id: str | None
    tenant_header: str | None
    # Where the request, or the simulator's answer, broke xAI's contract (local/xai_contract) with the
    # options that were on.
    request_violations: tuple[str, ...] = ()
    answer_violations: tuple[str, ...] = ()


@dataclass
class _Reply:
    status: int
    body: Any = None  # dict/list -> JSON, bytes -> as is, None -> empty
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"

    def payload(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


# xAI names the gRPC status behind an HTTP error with its standard description.
GRPC_SENTENCES = {
    400: "Client specified an invalid argument",
    401: "The request does not have valid authentication credentials",
    403: "The caller does not have permission to execute the specified operation",
    404: "Some requested entity was not found",
    405: "Operation is not implemented or not supported",
    409: "The system is not in a state required for the operation's execution",
    429: "Some resource has been exhausted",
    500: "Internal error",
    503: "The service is currently unavailable",
    504: "Deadline expired before operation could complete",
}
BILLING_MESSAGE = (
    "Your team {team} has either used all available credits or reached its monthly spending limit. "
    "To continue making API requests, please purchase more credits or raise your spending limit."
)


def _error_reply(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> _Reply:
    """xAI's flat error body: {"code": <gRPC sentence>, "error": <text>} (plus e.g. "usage")."""
    body = {"code": GRPC_SENTENCES.get(status, "Unknown error"), "error": message, **extra}
    return _Reply(status, body, headers or {})


def _plain_reply(status: int, text: str) -> _Reply:
    return _Reply(status, text.encode(), content_type="text/plain; charset=utf-8")


class _ApiError(Exception):
    """Ends a request early with a prepared reply."""

    def __init__(self, reply: _Reply):
        super().__init__(reply.status)
        self.reply = reply


def _invalid(field: str, problem: str) -> _ApiError:
    return _ApiError(_error_reply(400, f"{field}: {problem}"))


class _DropConnection(Exception):
    """Close the connection without answering (injected reset, or the simulator is stopping)."""

    def __init__(self, reset: bool = False):
        super().__init__()
        self.reset = reset


@dataclass
class _Request:
    method: str
    path: str
    headers: Any
    body: dict | None
    body_error: str | None
    config: SimulatorConfig
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    request_id: str | None = None

    def json(self) -> dict:
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            raise _ApiError(_plain_reply(415, "Expected request with `Content-Type: application/json`"))
        if self.body_error:
            raise _ApiError(_plain_reply(400, self.body_error))
        return self.body


@dataclass
class _Job:
    id: str
    kind: str  # "video" | "chat"
    model: str
    created: float
    finish_time: float  # wall clock, scheduled when the job was created
    outcome: str  # "done" | "failed" | "moderated" | "expired"
    duration: int = 0
    resolution: str = "480p"
    result: dict | None = None
    callback_url: str | None = None
    cancelled_at: float | None = None
    delivered: bool = False

    def state(self, now: float) -> str:
        if self.cancelled_at is not None:
            return "cancelled"
        if now < self.finish_time:
            return "pending"
        return self.outcome

    def cost_ticks(self) -> int:
        """What xAI bills for the video: its seconds at its resolution's price, moderated or not."""
        if self.kind != "video" or self.outcome not in ("done", "moderated"):
            return 0
        return round(self.duration * VIDEO_USD_PER_SECOND.get(self.resolution, 0.05) * USD_TICKS)

    def progress(self, now: float) -> int:
        span = self.finish_time - self.created
        if span <= 0:
            return 99
        return max(0, min(99, int(99 * (now - self.created) / span)))


class _SlidingWindow:
    """(time, amount) entries over the last `span` seconds of the monotonic clock."""

    def __init__(self, span: float):
        self.span = span
        self.entries: deque[tuple[float, int]] = deque()
        self.used = 0

    def expire(self, now: float) -> None:
        while self.entries and self.entries[0][0] <= now - self.span:
            self.used -= self.entries.popleft()[1]

    def wait_for(self, now: float, amount: int, limit: int) -> float:
        """Seconds until `amount` more fits under `limit` (inf if it never can)."""
        if amount > limit:
            return math.inf
        excess = self.used + amount - limit
        if excess <= 0:
            return 0.0
        for at, used in self.entries:
            excess -= used
            if excess <= 0:
                return at + self.span - now
        return math.inf

    def reset_after(self, now: float) -> float:
        """Seconds until the oldest entry leaves the window."""
        return max(0.0, self.entries[0][0] + self.span - now) if self.entries else 0.0

    def add(self, now: float, amount: int) -> None:
        self.entries.append((now, amount))
        self.used += amount


class _Bucket:
    """A per-second budget: it refills at `rate` a second up to one second's worth (at least one unit),
    so nothing saved up over a minute can go out in a burst (xAI: "you cannot spend a full minute's
    requests in a single second")."""

    def __init__(self) -> None:
        self.level: float | None = None
        self.at = 0.0

    def refill(self, now: float, rate: float) -> None:
        capacity = max(1.0, rate)
        elapsed = now - self.at
        self.level = capacity if self.level is None else min(capacity, self.level + elapsed * rate)
        self.at = now

    def wait_for(self, now: float, amount: float, rate: float) -> float:
        """Seconds until `amount` may go. An amount above one second's budget goes alone, when the
        budget is full, and leaves a debt the next seconds repay."""
        self.refill(now, rate)
        need = min(amount, max(1.0, rate))
        return 0.0 if self.level >= need - 1e-9 else (need - self.level) / rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def full_in(self, rate: float) -> float:
        return max(0.0, (max(1.0, rate) - (self.level or 0.0)) / rate)


class _Scheduler:
    """One thread running callables at wall-clock due times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="xai-sim-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()

    def at(self, due: float, action: Callable[[], None]) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, action))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.time()):
                    self._cond.wait(self._heap[0][0] - time.time() if self._heap else None)
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            action()


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _undeserializable(problem: str) -> _ApiError:
    """xAI answers a body it cannot read into its request type with a plain-text 422."""
    return _ApiError(
        _plain_reply(422, f"Failed to deserialize the JSON body into the target type: {problem}")
    )


def _check_messages(messages: Any, field: str) -> list[dict]:
    if messages is None:
        raise _undeserializable(f"missing field `{field}`")
    if not isinstance(messages, list):
        raise _undeserializable(f"{field}: invalid type, expected a sequence")
    if not messages:
        raise _invalid(field, "must be a non-empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _undeserializable(f"{field}[{i}]: missing field `role`")
        if not isinstance(message.get("content"), str | list):
            raise _undeserializable(f"{field}[{i}].content: expected a string or a list of parts")
    return messages


def _optional_positive_int(body: dict, field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _undeserializable(f"{field}: invalid type: {type(value).__name__}, expected an integer")
    if value < 1:
        raise _invalid(field, "must be a positive integer")
    return value


def _is_reasoning(model: str) -> bool:
    if "non-reasoning" in model:
        return False
    return model.startswith(("grok-3-mini", "grok-4", "grok-code"))


def _check_parameters(model: str, body: dict) -> None:
    """The per-model rejections xAI answers with 400 (its docs and live captures)."""
    unsupported = []
    if body.get("presence_penalty") is not None and (model.startswith("grok-3") or _is_reasoning(model)):
        unsupported.append("presencePenalty")
    if _is_reasoning(model):
        unsupported += [
            name
            for field, name in (("frequency_penalty", "frequencyPenalty"), ("stop", "stop"))
            if body.get(field) is not None
        ]
    if body.get("reasoning_effort") is not None and not model.startswith("grok-3-mini"):
        unsupported.append("reasoningEffort")
    if unsupported:
        raise _ApiError(_error_reply(400, f"Model {model} does not support parameter {unsupported[0]}."))


def _prompt_tokens(messages: list[dict]) -> int:
    chars = sum(len(_text_of(m.get("content"))) for m in messages)
    return math.ceil(chars / 4) + 3 * len(messages)


def _echo(messages: list[dict]) -> str:
    users = [m for m in messages if m.get("role") == "user"] or messages
    return "echo: " + _text_of(users[-1].get("content"))[:200]


def _check_model(body: dict, known: Callable[[str], bool], default: str | None = None) -> str:
    model = body.get("model", default)
    if model is None:
        raise _undeserializable("missing field `model`")
    if not isinstance(model, str):
        raise _undeserializable("model: invalid type, expected a string")
    if not known(model):
        raise _ApiError(
            _error_reply(404, f"The model {model} does not exist or your team does not have access to it")
        )
    return model


def _fake_mp4(job_id: str) -> bytes:
    block = hashlib.sha256(job_id.encode()).digest()
    return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + block * 128


_ID = r"[A-Za-z0-9_.-]+"


class XaiSimulator:
    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self._config = dataclasses.replace(config or SimulatorConfig())
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._rng = random.Random(self._config.random_seed)
        self._calls: list[CallRecord] = []
        self._jobs: dict[str, _Job] = {}
        self._chat_billed_ticks = 0
        self._injections: list[tuple[str, deque]] = []
        self._chat_requests = _Bucket()
        self._chat_tokens = _Bucket()
        self._video_requests = _SlidingWindow(1.0)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._scheduler = _Scheduler()
        # (method, path, handler, the config extension that must be on for the route to exist)
        self._routes: list[tuple[str, re.Pattern, Callable[[_Request], _Reply], str | None]] = [
            ("POST", re.compile(r"/v1/chat/completions"), self._chat_completions, None),
            ("GET", re.compile(rf"/v1/chat/deferred-completion/(?P<id>{_ID})"), self._deferred_result, None),
            ("POST", re.compile(r"/v1/responses"), self._responses, None),
            ("POST", re.compile(r"/v1/videos/generations"), self._video_submit, None),
            ("POST", re.compile(r"/v1/videos/edits"), self._video_submit, None),
            ("POST", re.compile(rf"/v1/videos/(?P<id>{_ID})/cancel"), self._video_cancel, "video_cancel"),
            ("GET", re.compile(rf"/v1/videos/(?P<id>{_ID})"), self._video_status, None),
        ]

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> XaiSimulator:
        self._server = _Server((self._host, self._port), _Handler, self)
        self._scheduler.start()
        # A short poll interval keeps stop() fast (shutdown waits for the serve loop to notice).
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="xai-sim-http", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._scheduler.stop()

    def __enter__(self) -> XaiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    # -- inspection and control --------------------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        with self._lock:
            return dataclasses.replace(self._config)

    @property
    def calls(self) -> list[CallRecord]:
        with self._lock:
            return list(self._calls)

    def violations(self, since: int = 0, requests: bool = True, answers: bool = True) -> list[str]:
        """The contract violations of the calls logged from index `since` on (those of the requests
        clients sent, of the simulator's answers, or both), as "METHOD path: problem"."""
        return [
            f"{c.method} {c.path}: {problem}"
            for c in self.calls[since:]
            for problem in (c.request_violations if requests else ())
            + (c.answer_violations if answers else ())
        ]

    def count(
        self, path_prefix: str | None = None, status: int | None = None, method: str | None = None
    ) -> int:
        return sum(
            1
            for c in self.calls
            if (path_prefix is None or c.path.startswith(path_prefix))
            and (status is None or c.status == status)
            and (method is None or c.method == method.upper())
        )

    def update(self, **fields: Any) -> None:
        unknown = set(fields) - CONFIG_FIELDS
        if unknown:
            raise TypeError(f"unknown simulator config fields: {sorted(unknown)}")
        if fields.get("credits_exhausted_status", 429) not in (429, 403):
            raise ValueError("credits_exhausted_status must be 429 or 403")
        with self._lock:
            self._config = dataclasses.replace(self._config, **fields)
            if "random_seed" in fields:
                self._rng.seed(fields["random_seed"])

    def inject(self, path_prefix: str, *outcomes: int | str) -> None:
        """Force the outcome of the next calls whose path starts with `path_prefix`, in order.

        An outcome is an HTTP status (429 gets the rate-limit body, 200 lets the call through), "hang"
        or "reset" (close the connection without an answer).
        """
        for outcome in outcomes:
            if not (isinstance(outcome, int) or outcome in ("hang", "reset")):
                raise ValueError(f"unknown outcome {outcome!r}")
        with self._lock:
            self._injections.append((path_prefix, deque(outcomes)))

    def finish_at(self, request_id: str) -> float | None:
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return None
            return job.cancelled_at if job.cancelled_at is not None else job.finish_time

    def reset(self) -> None:
        """Forget calls, jobs, queued injections and rate-limit history (the config stays)."""
        with self._lock:
            self._calls.clear()
            self._jobs.clear()
            self._chat_billed_ticks = 0
            self._injections.clear()
            self._chat_requests = _Bucket()
            self._chat_tokens = _Bucket()
            self._video_requests = _SlidingWindow(1.0)
        self._scheduler.clear()

    def stats(self) -> dict:
        calls = self.calls
        by_path: dict[str, Counter] = {}
        for c in calls:
            path = c.path.replace(c.request_id, "{id}") if c.request_id else c.path
            by_path.setdefault(path, Counter())[str(c.status)] += 1
        now = time.time()
        with self._lock:
            jobs = Counter(f"{j.kind}:{j.state(now)}" for j in self._jobs.values())
            video_ticks = sum(j.cost_ticks() for j in self._jobs.values() if j.state(now) != "pending")
            billed = {"chat": self._chat_billed_ticks, "video": video_ticks}
        return {
            "total": len(calls),
            "by_status": dict(Counter(str(c.status) for c in calls)),
            "by_path": {path: dict(counts) for path, counts in by_path.items()},
            "rate_limited": sum(1 for c in calls if c.status == 429),
            "jobs": dict(jobs),
            # What xAI would bill: chat completions answered, videos rendered (moderated ones too).
            "billed_usd_ticks": billed | {"total": sum(billed.values())},
        }

    # -- request dispatch --------------------------------------------------------------------------

    def _handle(self, method: str, target: str, headers: Any, raw_body: bytes) -> _Reply:
        path = target.partition("?")[0]
        if path.startswith("/sim/"):
            return self._control(method, path, raw_body)
        if path.startswith("/media/"):
            return self._media(method, path)
        return self._api_call(method, path, headers, raw_body)

    def _api_call(self, method: str, path: str, headers: Any, raw_body: bytes) -> _Reply:
        arrived = time.time()
        body, body_error = None, None
        if raw_body:
            try:
                body = json.loads(raw_body)
            except ValueError:
                body_error = "Failed to parse the request body as JSON"
            if body is not None and not isinstance(body, dict):
                body, body_error = (
                    None,
                    "Failed to deserialize the JSON body into the target type: expected a map",
                )
        elif method == "POST":
            body_error = "Failed to parse the request body as JSON: EOF while parsing a value"
        with self._lock:
            config = self._config
        request = _Request(method, path, headers, body, body_error, config)
        extensions = frozenset(name for name in EXTENSIONS if getattr(config, name))
        status, reply = 0, None
        try:
            reply = self._api_reply(request)
            status = reply.status
            return reply
        except _DropConnection as drop:
            status = 0 if drop.reset else 504
            raise
        finally:
            request_violations = xai_contract.request_problems(method, path, body, extensions)
            answer_violations = []
            if reply is not None:
                answer_violations = xai_contract.response_problems(
                    method,
                    path,
                    body,
                    reply.status,
                    reply.headers,
                    reply.content_type,
                    reply.payload(),
                    extensions,
                )
            record = CallRecord(
                arrived,
                method,
                path,
                status,
                body,
                request.request_id,
                headers.get(TENANT_HEADER),
                tuple(request_violations),
                tuple(answer_violations),
            )
            with self._lock:
                self._calls.append(record)

    def _api_reply(self, request: _Request) -> _Reply:
        handler, allowed = None, False
        for method, pattern, route_handler, extension in self._routes:
            if extension and not getattr(request.config, extension):
                continue
            match = pattern.fullmatch(request.path)
            if match:
                allowed = True
                if method == request.method:
                    handler, request.params = route_handler, match.groupdict()
                    break
        if handler is None:
            if allowed:
                return _error_reply(405, f"Method {request.method} not allowed")
            return _error_reply(404, f"No such endpoint: {request.path}")
        request.request_id = request.params.get("id")
        config = request.config
        given = request.headers.get("Authorization") or ""
        if config.api_key and given != f"Bearer {config.api_key}":
            if not given.startswith("Bearer ") or not given.removeprefix("Bearer ").strip():
                return _error_reply(401, "No API key provided: send it as 'Authorization: Bearer <key>'")
            # xAI answers a wrong key with 400, masking all but the key's first characters.
            shown = given.removeprefix("Bearer ")[:2] + "***"
            return _error_reply(400, f"Incorrect API key provided: {shown}")
        if config.credits_exhausted:
            team = uuid.uuid5(uuid.NAMESPACE_URL, config.api_key or "team")
            return _error_reply(config.credits_exhausted_status, BILLING_MESSAGE.format(team=team))
        fault = self._fault_for(request)
        if fault is not None:
            return self._faulted(fault, request.config)
        try:
            return handler(request)
        except _ApiError as error:
            return error.reply

    def _fault_for(self, request: _Request) -> int | str | None:
        with self._lock:
            for prefix, outcomes in self._injections:
                if outcomes and request.path.startswith(prefix):
                    outcome = outcomes.popleft()
                    self._injections = [entry for entry in self._injections if entry[1]]
                    return None if outcome == 200 else outcome
            config = request.config
            if not (config.error_500_rate or config.error_503_rate or config.hang_rate):
                return None
            draw = self._rng.random()
        for rate, outcome in (
            (config.error_500_rate, 500),
            (config.error_503_rate, 503),
            (config.hang_rate, "hang"),
        ):
            if draw < rate:
                return outcome
            draw -= rate
        return None

    def _faulted(self, outcome: int | str, config: SimulatorConfig) -> _Reply:
        if outcome == "reset":
            raise _DropConnection(reset=True)
        if outcome == "hang":
            self._sleep(config.hang_seconds)
            return _error_reply(504, "Gateway timeout")
        if outcome == 429:
            return _rate_limited(1.0, {}, config)
        if outcome == 422:  # xAI's 422s (bodies it cannot deserialize) are plain text
            return _plain_reply(422, "Injected fault (HTTP 422)")
        return _error_reply(outcome, f"Injected fault (HTTP {outcome})")

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _DropConnection()

    def _chat_latency(self, config: SimulatorConfig) -> None:
        self._sleep(self._draw_lognormal(config.chat_latency_median, config.chat_latency_sigma))

    def _draw_lognormal(self, median: float, sigma: float) -> float:
        if median <= 0:
            return 0.0
        with self._lock:
            return self._rng.lognormvariate(math.log(median), sigma) if sigma > 0 else median

    # -- rate limits -------------------------------------------------------------------------------

    def _admit_chat(self, config: SimulatorConfig, tokens: int) -> dict[str, str]:
        """Charge one request and `tokens` tokens, or raise 429; returns the x-ratelimit-* headers when
        that extension is on (else none)."""
        rpm, tpm = config.requests_per_minute, config.tokens_per_minute
        buckets = [(self._chat_requests, "requests", rpm, 1)] if rpm else []
        buckets += [(self._chat_tokens, "tokens", tpm, tokens)] if tpm else []
        with self._lock:
            now = time.monotonic()
            wait = max(
                [bucket.wait_for(now, amount, limit / 60) for bucket, _, limit, amount in buckets] or [0]
            )
            if tpm and tokens > tpm:
                wait = math.inf
            if wait <= 0:
                for bucket, _, _, amount in buckets:
                    bucket.take(amount)
            headers = {}
            if config.rate_limit_headers:
                for bucket, unit, limit, _ in buckets:
                    headers |= _limit_headers(unit, limit, bucket.level, bucket.full_in(limit / 60))
        if wait > 0:
            raise _ApiError(_rate_limited(wait, headers, config, too_large=math.isinf(wait)))
        return headers

    def _admit_video(self, config: SimulatorConfig) -> None:
        limit = config.video_requests_per_second
        if not limit:
            return
        with self._lock:
            now = time.monotonic()
            self._video_requests.expire(now)
            wait = self._video_requests.wait_for(now, 1, limit)
            if wait <= 0:
                self._video_requests.add(now, 1)
                return
            headers = {}
            if config.rate_limit_headers:
                left = limit - self._video_requests.used
                headers = _limit_headers("requests", limit, left, self._video_requests.reset_after(now))
        raise _ApiError(_rate_limited(wait, headers, config))

    # -- chat --------------------------------------------------------------------------------------

    def _chat_completions(self, request: _Request) -> _Reply:
        body = request.json()
        model = _check_model(body, _is_chat_model)
        messages = _check_messages(body.get("messages"), "messages")
        max_tokens = _optional_positive_int(body, "max_tokens") or _optional_positive_int(
            body, "max_completion_tokens"
        )
        deferred = body.get("deferred") or False
        if not isinstance(deferred, bool):
            raise _undeserializable("deferred: invalid type, expected a boolean")
        _check_parameters(model, body)
        prompt_tokens = _prompt_tokens(messages)
        headers = self._admit_chat(request.config, prompt_tokens + (max_tokens or 64))
        content = _echo(messages)
        completion_tokens = min(max_tokens or 64, len(content) // 4 + 1)
        ticks = round(
            prompt_tokens * CHAT_USD_PER_TOKEN[0] * USD_TICKS
            + completion_tokens * CHAT_USD_PER_TOKEN[1] * USD_TICKS
        )
        with self._lock:
            self._chat_billed_ticks += ticks
        completion = {
            "id": str(uuid.uuid4()),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {
                    "text_tokens": prompt_tokens,
                    "audio_tokens": 0,
                    "image_tokens": 0,
                    "cached_tokens": 0,
                },
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
                "num_sources_used": 0,
                "cost_in_usd_ticks": ticks,
            },
            "system_fingerprint": "fp_xai_simulator",
            "service_tier": "default",
        }
        if deferred:
            job = self._add_job(
                "chat",
                model,
                request.config.deferred_chat_duration,
                outcome="done",
                callback_url=body.get("callback_url"),
                config=request.config,
                result=completion,
            )
            completion["id"] = request.request_id = job.id
            key = "id" if request.config.seed_shapes else "request_id"
            return _Reply(200, {key: job.id}, headers)
        self._chat_latency(request.config)
        return _Reply(200, completion, headers)

    def _deferred_result(self, request: _Request) -> _Reply:
        headers = self._admit_chat(request.config, 0)
        with self._lock:
            job_id = request.params["id"]
            job = self._jobs.get(job_id)
            if job is None or job.kind != "chat" or job.delivered:
                raise _ApiError(_error_reply(404, f"No deferred completion with id {job_id}", headers))
            if job.state(time.time()) == "pending":
                return _Reply(202, None, headers)
            job.delivered = True
            return _Reply(200, job.result, headers)

    def _responses(self, request: _Request) -> _Reply:
        body = request.json()
        model = _check_model(body, _is_chat_model)
        given = body.get("input")
        if isinstance(given, str) and given:
            messages = [{"role": "user", "content": given}]
        else:
            messages = _check_messages(given, "input")
        max_tokens = _optional_positive_int(body, "max_output_tokens")
        input_tokens = _prompt_tokens(messages)
        headers = self._admit_chat(request.config, input_tokens + (max_tokens or 64))
        text = _echo(messages)
        output_tokens = min(max_tokens or 64, len(text) // 4 + 1)
        self._chat_latency(request.config)
        return _Reply(
            200,
            {
                "id": f"resp_{uuid.uuid4().hex}",
                "object": "response",
                "created_at": int(time.time()),
                "model": model,
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "id": f"msg_{uuid.uuid4().hex}",
                        "status": "completed",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}],
                    }
                ],
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens,
                },
            },
            headers,
        )

    # -- video -------------------------------------------------------------------------------------

    def _video_submit(self, request: _Request) -> _Reply:
        body = request.json()
        model = _check_model(body, lambda name: name in VIDEO_MODELS, default=VIDEO_MODELS[0])
        edit = request.path.endswith("/edits")
        prompt = body.get("prompt")
        if prompt is None and (edit or body.get("image") is None):
            raise _undeserializable("missing field `prompt`")
        if prompt is not None and not isinstance(prompt, str):
            raise _undeserializable("prompt: invalid type, expected a string")
        if prompt is not None and not prompt.strip():
            raise _invalid("prompt", "must not be empty")
        duration, resolution = DEFAULT_VIDEO_SECONDS, "480p"
        if edit:
            video = body.get("video")
            if video is None:
                raise _undeserializable("missing field `video`")
            url = video.get("url") if isinstance(video, dict) else None
            if not isinstance(url, str) or not url:
                raise _invalid("video.url", "is required and must be a non-empty string")
            if not (url.split("?")[0].lower().endswith(".mp4") or url.startswith("data:video/mp4")):
                raise _invalid("video.url", "the video must have the .mp4 file extension")
            # An edit's duration and resolution follow its input video (at most ~8.7 s).
        else:
            given = body.get("duration")
            if isinstance(given, str) and given.isdigit():  # xAI accepts "8" as well as 8
                given = int(given)
            if given is not None:
                if not isinstance(given, int) or isinstance(given, bool):
                    raise _undeserializable("duration: invalid type, expected an integer")
                if not 1 <= given <= 15:
                    raise _invalid("duration", "must be an integer from 1 to 15")
                duration = given
            for field, allowed in (("aspect_ratio", ASPECT_RATIOS), ("resolution", RESOLUTIONS)):
                value = body.get(field)
                if value is not None and value not in allowed:
                    raise _undeserializable(f"{field}: unknown variant `{value}`, expected one of {allowed}")
            resolution = body.get("resolution") or resolution
            if resolution == "1080p" and model not in HD_VIDEO_MODELS:
                raise _invalid("resolution", f"1080p is not supported by {model}")
            image = body.get("image")
            if image is not None and not (isinstance(image, dict) and isinstance(image.get("url"), str)):
                raise _undeserializable("image: expected an object with a url")
        self._admit_video(request.config)
        config = request.config
        self._sleep(config.video_submit_latency)
        job = self._add_job(
            "video",
            model,
            self._draw_lognormal(config.video_duration_median, config.video_duration_sigma),
            outcome=self._draw_outcome(config),
            callback_url=body.get("callback_url"),
            config=config,
            duration=duration,
            resolution=resolution,
        )
        request.request_id = job.id
        if config.seed_shapes:
            return _Reply(200, {"id": job.id, "status": "pending", "created": int(job.created)})
        return _Reply(200, {"request_id": job.id})

    def _draw_outcome(self, config: SimulatorConfig) -> str:
        with self._lock:
            draw = self._rng.random()
        for rate, outcome in (
            (config.video_failure_rate, "failed"),
            (config.video_moderation_rate, "moderated"),
            (config.video_expired_rate, "expired"),
        ):
            if draw < rate:
                return outcome
            draw -= rate
        return "done"

    def _video_status(self, request: _Request) -> _Reply:
        now = time.time()
        job = self._job(request.params["id"], "video")
        state = job.state(now)
        if request.config.seed_shapes:
            return _Reply(200, self._seed_video_status(job, state, now))
        if state == "pending":
            # xAI's spec declares the 202 without content; live answers sometimes carry a body.
            with self._lock:
                with_body = self._rng.random() < request.config.video_pending_body_rate
            return _Reply(202, {"status": "pending", "progress": job.progress(now)} if with_body else None)
        if state == "moderated":
            return _error_reply(400, MODERATED_MESSAGE, usage={"cost_in_usd_ticks": job.cost_ticks()})
        if state == "done":
            return _Reply(
                200,
                {
                    "status": "done",
                    "video": {
                        "url": self._media_url(job),
                        "duration": job.duration,
                        "respect_moderation": True,
                    },
                    "model": job.model,
                    "usage": {"cost_in_usd_ticks": job.cost_ticks()},
                    "progress": 100,
                },
            )
        if state == "expired":
            return _Reply(200, {"status": "expired", "model": job.model})
        return _Reply(200, {"status": "failed", "error": _job_error(state)})

    def _seed_video_status(self, job: _Job, state: str, now: float) -> dict:
        reply: dict[str, Any] = {"id": job.id, "created": int(job.created), "model": job.model}
        if state == "pending":
            reply |= {"status": "processing", "progress": job.progress(now)}
        elif state == "done":
            reply |= {"status": "completed", "data": [{"url": self._media_url(job)}], "progress": 100}
        else:
            reply |= {"status": "failed", "error": _job_error(state), "progress": 0}
        return reply

    def _video_cancel(self, request: _Request) -> _Reply:
        with self._lock:
            job = self._job(request.params["id"], "video")
            now = time.time()
            state = job.state(now)
            if state != "pending":
                raise _ApiError(_error_reply(409, f"Video {job.id} is already {state}"))
            job.cancelled_at = now
        key = "id" if request.config.seed_shapes else "request_id"
        return _Reply(200, {key: job.id, "status": "cancelled"})

    def _media(self, method: str, path: str) -> _Reply:
        match = re.fullmatch(rf"/media/(?P<id>{_ID})\.mp4", path)
        with self._lock:
            job = self._jobs.get(match["id"]) if match else None
        if method != "GET" or job is None or job.kind != "video" or job.state(time.time()) != "done":
            return _error_reply(404, "Not found")
        return _Reply(200, _fake_mp4(job.id), content_type="video/mp4")

    def _media_url(self, job: _Job) -> str:
        return f"{self.url}/media/{job.id}.mp4"

    # -- jobs and callbacks ------------------------------------------------------------------------

    def _job(self, job_id: str, kind: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.kind != kind:
            raise _ApiError(_error_reply(404, f"No {kind} request with id {job_id}"))
        return job

    def _add_job(
        self,
        kind: str,
        model: str,
        seconds: float,
        outcome: str,
        callback_url: Any,
        config: SimulatorConfig,
        **extra: Any,
    ) -> _Job:
        now = time.time()
        job = _Job(
            str(uuid.uuid4()),
            kind,
            model,
            now,
            now + seconds,
            outcome,
            callback_url=callback_url if isinstance(callback_url, str) else None,
            **extra,
        )
        with self._lock:
            self._jobs[job.id] = job
        if config.callbacks and job.callback_url:
            self._scheduler.at(job.finish_time, lambda: self._job_finished(job))
        return job

    def _job_finished(self, job: _Job) -> None:
        with self._lock:
            if self._jobs.get(job.id) is not job or job.cancelled_at is not None:
                return
        payload = {"request_id": job.id, "status": "done" if job.outcome == "done" else "failed"}
        threading.Thread(
            target=_deliver,
            args=(job.callback_url, payload),
            daemon=True,
            name=f"xai-sim-callback-{job.id[:8]}",
        ).start()

    # -- /sim control endpoints --------------------------------------------------------------------

    def _control(self, method: str, path: str, raw_body: bytes) -> _Reply:
        try:
            body = json.loads(raw_body) if raw_body else {}
        except ValueError:
            return _Reply(400, {"error": "invalid JSON"})
        try:
            if (method, path) == ("GET", "/sim/calls"):
                return _Reply(200, [dataclasses.asdict(c) for c in self.calls])
            if (method, path) == ("GET", "/sim/stats"):
                return _Reply(200, self.stats())
            if path == "/sim/config" and method in ("GET", "POST"):
                if method == "POST":
                    self.update(**body)
                return _Reply(200, dataclasses.asdict(self.config))
            if (method, path) == ("POST", "/sim/inject"):
                outcomes = body.get("outcomes", [])
                self.inject(body.get("path_prefix", ""), *outcomes)
                return _Reply(200, {"queued": len(outcomes)})
            if (method, path) == ("POST", "/sim/reset"):
                self.reset()
                return _Reply(200, {"reset": True})
        except (TypeError, ValueError, AttributeError) as error:
            return _Reply(400, {"error": str(error)})
        return _Reply(404, {"error": f"no control endpoint {method} {path}"})


def _rate_limited(
    wait: float, headers: dict[str, str], config: SimulatorConfig, too_large: bool = False
) -> _Reply:
    if too_large:
        message = "The request is larger than the team's tokens-per-minute limit"
    else:
        message = "The team has reached its rate limit for this model; slow down and retry later"
    if config.retry_after:
        headers = headers | {"Retry-After": str(60 if math.isinf(wait) else max(1, math.ceil(wait)))}
    return _error_reply(429, message, headers)


def _limit_headers(unit: str, limit: int, remaining: float, reset: float) -> dict[str, str]:
    """The extension's headers: the configured limit, what may go now, and the seconds until the
    budget is whole again."""
    return {
        f"x-ratelimit-limit-{unit}": str(limit),
        f"x-ratelimit-remaining-{unit}": str(max(0, math.floor(remaining + 1e-9))),
        f"x-ratelimit-reset-{unit}": f"{reset:.2f}s",
    }


def _job_error(state: str) -> dict:
    if state == "cancelled":  # the cancel extension's outcome, in a code xAI's enum has
        return {"code": "failed_precondition", "message": "Cancelled by request"}
    return {"code": "internal_error", "message": "Video generation failed (simulated)"}


def _is_chat_model(model: str) -> bool:
    return model.startswith("grok") and model not in VIDEO_MODELS


def _deliver(url: str, payload: dict) -> None:
    data = json.dumps(payload).encode()
    for attempt in range(3):
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.2 * 2**attempt)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default listen backlog of 5 drops bursts of new connections

    def __init__(self, address: tuple[str, int], handler: type, simulator: XaiSimulator):
        self.simulator = simulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut idle keep-alive connections so no request is served after stop()."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up are expected
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients wait ~40 ms per reply.
    disable_nagle_algorithm = True
    server: _Server

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        try:
            reply = self.server.simulator._handle(self.command, self.path, self.headers, raw_body)
        except _DropConnection as drop:
            if drop.reset:  # linger 0 makes close() send RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        except Exception as error:  # a simulator bug: answer it rather than leave the client hanging
            traceback.print_exc()
            reply = _error_reply(500, f"xAI simulator error: {error!r}")
        payload = reply.payload()
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if payload:
                self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, SimulatorConfig]:
    parser = argparse.ArgumentParser(
        prog="python -m local.xai_simulator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    aliases = {
        "video_duration_median": ["--video-duration"],
        "requests_per_minute": ["--rpm"],
        "tokens_per_minute": ["--tpm"],
        "video_requests_per_second": ["--video-rps"],
    }
    for field in dataclasses.fields(SimulatorConfig):
        flags = ["--" + field.name.replace("_", "-"), *aliases.get(field.name, [])]
        if isinstance(field.default, bool):
            parser.add_argument(*flags, dest=field.name, action="store_true")
        else:
            kind = int if field.name == "random_seed" else type(field.default)
            parser.add_argument(*flags, dest=field.name, type=kind, default=field.default)
    args = parser.parse_args(argv)
    return args, SimulatorConfig(**{name: getattr(args, name) for name in CONFIG_FIELDS})


def main(argv: list[str] | None = None) -> None:
    args, config = _parse_args(argv)
    with XaiSimulator(config, host=args.host, port=args.port) as sim:
        print(sim.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
