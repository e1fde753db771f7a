"""xAI's REST contract, as far as xjobs uses it: JSON Schemas (the *.json beside this file) derived
from xAI's OpenAPI spec and what xAI documents beyond it, and the checks the simulator runs on every
/v1 call it serves — the request a client sent, and the answer the simulator gave (its route, its
headers, its body). A check returns the problems it found, as text; none means the call kept to the
contract.

The simulator's extensions (SimulatorConfig options beyond xAI) are passed in by name: with one off,
what only it adds (a header, a route, a body field) is a violation.
"""

import json
import re
from functools import cache
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).parent
SCHEMA_NAMES = (
    "chat_request",
    "chat_response",
    "deferred_submit_response",
    "video_generation_request",
    "video_edit_request",
    "video_status_response",
    "error",
)

CHAT = "/v1/chat/completions"
DEFERRED_RESULT = re.compile(r"/v1/chat/deferred-completion/[^/]+")
RESPONSES = "/v1/responses"
VIDEO_SUBMITS = {
    "/v1/videos/generations": "video_generation_request",
    "/v1/videos/edits": "video_edit_request",
}
VIDEO_STATUS = re.compile(r"/v1/videos/(?!generations$|edits$)[^/]+")
VIDEO_CANCEL = re.compile(r"/v1/videos/[^/]+/cancel")

# What any HTTP server sends; every other response header must come from an extension.
PLAIN_HEADERS = frozenset({"content-type", "content-length", "date", "server", "connection", "keep-alive"})
# Statuses whose body xAI may send as plain text (axum's rejections of a body it cannot read).
PLAIN_TEXT_STATUSES = frozenset({400, 415, 422})


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def problems(name: str, document: object) -> list[str]:
    """What in `document` breaks the schema `name` (empty when it conforms)."""
    return [
        f"{name}: {'/'.join(str(p) for p in error.absolute_path) or '(body)'}: {error.message}"
        for error in validator(name).iter_errors(document)
    ]


def is_xai_route(method: str, path: str) -> bool:
    return (method == "POST" and path in (CHAT, RESPONSES, *VIDEO_SUBMITS)) or (
        method == "GET" and bool(DEFERRED_RESULT.fullmatch(path) or VIDEO_STATUS.fullmatch(path))
    )


def request_problems(method: str, path: str, body: dict | None, extensions: frozenset[str]) -> list[str]:
    """The request a client sent, against the request schema of its route (if it has one)."""
    name = {CHAT: "chat_request", **VIDEO_SUBMITS}.get(path) if method == "POST" else None
    if name is None:
        return []
    if body is None:
        return [f"{name}: the body is not a JSON object"]
    if "callbacks" in extensions:
        body = {key: value for key, value in body.items() if key != "callback_url"}
    return problems(name, body)


def response_problems(
    method: str,
    path: str,
    request_body: dict | None,
    status: int,
    headers: dict[str, str],
    content_type: str,
    payload: bytes,
    extensions: frozenset[str],
) -> list[str]:
    """The answer the simulator gave: its route, the headers it added, its body."""
    found = []
    for name in headers:
        lowered = name.lower()
        allowed = (
            lowered in PLAIN_HEADERS
            or (lowered == "retry-after" and "retry_after" in extensions)
            or (lowered.startswith("x-ratelimit-") and "rate_limit_headers" in extensions)
        )
        if not allowed:
            found.append(f"header {name}: xAI does not send it")
    if not is_xai_route(method, path):
        cancel = "video_cancel" in extensions and method == "POST" and VIDEO_CANCEL.fullmatch(path)
        if status not in (404, 405) and not cancel:
            found.append(f"route {method} {path}: xAI has no such route, yet it answered {status}")
        return found
    if not payload:
        if status != 202 and status < 400:
            found.append(f"an empty {status}: only a pending poll (202) answers without a body")
        return found
    if not content_type.startswith("application/json"):
        if status not in PLAIN_TEXT_STATUSES:
            found.append(f"a {content_type} body with {status}: only 400, 415 and 422 may be plain text")
        return found
    try:
        body = json.loads(payload)
    except ValueError:
        return [*found, f"a {status} whose JSON body does not parse"]
    return found + _body_problems(method, path, request_body, status, body, extensions)


def _body_problems(
    method: str, path: str, request_body: dict | None, status: int, body: object, extensions: frozenset[str]
) -> list[str]:
    if status >= 400:
        return problems("error", body)
    if "seed_shapes" in extensions and (
        path in VIDEO_SUBMITS or VIDEO_STATUS.fullmatch(path) or path == CHAT
    ):
        return []  # the seed documents' shapes are an extension, not xAI's
    if path == RESPONSES:
        return []  # no schema: xjobs does not use the Responses API
    if path == CHAT:
        deferred = bool((request_body or {}).get("deferred"))
        return problems("deferred_submit_response" if deferred else "chat_response", body)
    if path in VIDEO_SUBMITS:
        return problems("deferred_submit_response", body)
    if DEFERRED_RESULT.fullmatch(path):
        if status == 202:
            return ["a pending deferred completion answers 202 without a body"]
        return problems("chat_response", body)
    found = problems("video_status_response", body)
    pending = isinstance(body, dict) and body.get("status") == "pending"
    if pending != (status == 202):
        found.append(f"video status {body.get('status') if isinstance(body, dict) else body!r} with {status}")
    return found
