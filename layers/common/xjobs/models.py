"""Request bodies of the public API. Unknown fields are refused so a typo never passes silently."""

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .xai import DEFERRED_CHAT, VIDEO_EDIT, VIDEO_GENERATION

MAX_PROMPT_CHARS = 4096
MAX_BODY_BYTES = 300_000  # a job keeps its request in its DynamoDB item (400 KB at most)
MAX_JSON_DEPTH = 64  # nesting of objects and arrays; far deeper input would exhaust the parser's stack

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# A surrogate escaped (\ud800) or encoded as bytes (json decodes bytes with "surrogatepass").
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class BadRequest(ValueError):
    """A request the API refuses with 400; the message names what is wrong (and `param`, the field)."""

    @property
    def param(self) -> str | None:
        named = re.match(r"^(?:field|parameter) '([^']+)'", str(self))
        return named.group(1) if named else None


class InvalidJson(ValueError):
    """Text that is not JSON this API accepts; the message says why."""


def load_json(raw: str | bytes) -> Any:
    """Parse JSON, refusing what would crash or mislead a later step: nesting deeper than
    MAX_JSON_DEPTH (checked before parsing, without recursion), NaN and Infinity, numbers longer than
    Python converts, invalid UTF-8 and lone surrogates (which no UTF-8 store can hold)."""
    data = raw.encode(errors="surrogatepass") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise InvalidJson(f"nested {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed")
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise InvalidJson(f"{exc.msg} at position {exc.pos}") from None
    except UnicodeDecodeError:
        raise InvalidJson("not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        if "digits" in str(exc):  # Python converts integers of at most 4,300 digits
            raise InvalidJson("a number has more than 4300 digits") from None
        raise InvalidJson(str(exc) or type(exc).__name__) from None
    if _SURROGATE.search(data):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise InvalidJson(
                "a string holds a lone surrogate (\\ud800-\\udfff): not valid Unicode"
            ) from None
    return value


def json_depth(raw: bytes) -> int:
    """How deep objects and arrays nest in this JSON text (strings ignored); linear time, no recursion."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= MAX_JSON_DEPTH:
        return min(len(brackets), MAX_JSON_DEPTH)  # cannot nest deeper than it opens
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:20]}... is too large")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MediaRef(_Strict):
    url: str = Field(min_length=1)


class _JobOptions(_Strict):
    webhook_url: str | None = Field(default=None, description="POSTed a signed message when the job ends")
    timeout_seconds: int | None = Field(default=None, ge=1, description="deadline of the job")


class VideoGeneration(_JobOptions):
    model: str = Field(default="grok-imagine-video", min_length=1)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    duration: int | None = Field(default=None, ge=1, le=15)
    aspect_ratio: Literal["1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"] | None = None
    resolution: Literal["480p", "720p", "1080p"] | None = None
    image: MediaRef | None = None
    reference_images: list[MediaRef] | None = None
    generate_audio: bool | None = None


class VideoEdit(_JobOptions):
    model: str = Field(default="grok-imagine-video", min_length=1)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    video: MediaRef


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class DeferredChat(_JobOptions):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    deferred: bool = Field(description="must be true: this API runs deferred completions only")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parallel_tool_calls: bool | None = None
    search_parameters: dict[str, Any] | None = None


REQUEST_MODELS: dict[str, type[_JobOptions]] = {
    VIDEO_GENERATION: VideoGeneration,
    VIDEO_EDIT: VideoEdit,
    DEFERRED_CHAT: DeferredChat,
}


def parse_job_request(kind: str, raw_body: str | None) -> _JobOptions:
    """Validate a request body; raises BadRequest naming the offending field."""
    if not raw_body:
        raise BadRequest("the request body is empty; send a JSON object")
    if len(raw_body.encode(errors="surrogatepass")) > MAX_BODY_BYTES:
        raise BadRequest(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    request = validate_body(REQUEST_MODELS[kind], raw_body)
    if isinstance(request, DeferredChat) and not request.deferred:
        raise BadRequest("field 'deferred': must be true (this API runs deferred completions only)")
    return request


def validate_body(model: type[BaseModel], raw_body: str):
    """The JSON object in the body as a `model`; raises BadRequest naming what is wrong."""
    try:
        data = load_json(raw_body)
    except InvalidJson as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"]) or "body"
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"field '{field}': {message}")
    return "; ".join(problems)


def upstream_body(request: _JobOptions) -> dict:
    """The body xAI receives: the request without xjobs' own options."""
    return request.model_dump(exclude_none=True, exclude={"webhook_url", "timeout_seconds"})
