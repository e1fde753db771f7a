"""Lines of a batch: the OpenAI batch input format in, output and error lines out.

Input: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``.
Output (both files): ``{"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
"error": {"code", "message"} | null}``. A line that cannot run becomes an error line; it never fails
the batch.
"""

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .models import ChatMessage, InvalidJson, describe_validation_error, load_json

CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
MAX_CUSTOM_ID_CHARS = 64
DEFAULT_COMPLETION_TOKENS = 64  # what xAI's limiter charges a request without max_tokens (simulator: same)
MAX_CHARGED_COMPLETION_TOKENS = 10_000_000


class BadLine(ValueError):
    """A line that cannot run; ``code`` goes into its error line."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # the rest of the chat request goes to xAI as it is
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    n: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stream: bool | None = None

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value):
        if value:
            raise ValueError("streaming is not available in a batch")
        return value


class BatchLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=MAX_CUSTOM_ID_CHARS)
    method: Literal["POST"]
    url: str
    body: ChatBody

    @field_validator("url")
    @classmethod
    def _chat_only(cls, value):
        if value not in CHAT_URLS:
            raise ValueError(f"must be /v1/chat/completions (a batch runs chat completions), not {value!r}")
        return value


def parse_line(raw: bytes) -> tuple[str, dict]:
    """(custom_id, body) of a valid line; raises BadLine saying what is wrong, whatever is wrong: no
    line, however hostile, raises anything else."""
    try:
        data = load_json(raw)
    except InvalidJson as exc:
        raise BadLine("invalid_json", f"the line is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadLine("invalid_json", "the line must be a JSON object")
    try:
        line = BatchLine.model_validate(data)
    except ValidationError as exc:
        raise BadLine("invalid_request", describe_validation_error(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one line's failure is that line's error, never the batch's
        raise BadLine("invalid_request", f"the line could not be validated ({type(exc).__name__})") from None
    if (line.body.n or 1) > 1 and _has_files(line.body.messages):
        raise BadLine("invalid_request", "field 'body.n': must be 1 when messages carry file attachments")
    return line.custom_id, data["body"]


def custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line if it has one that can be stored (for lines that fail validation)."""
    try:
        value = load_json(raw).get("custom_id")
    except (InvalidJson, AttributeError):
        return None
    return value if isinstance(value, str) and len(value) <= 4 * MAX_CUSTOM_ID_CHARS else None


def _has_files(messages: list[ChatMessage]) -> bool:
    return any(
        isinstance(m.content, list) and any(part.get("type") in ("file", "input_file") for part in m.content)
        for m in messages
    )


def estimated_tokens(body: dict) -> int:
    """What xAI's limiter will charge: prompt tokens (about 4 characters each) plus the completion's
    maximum; the limiter reserves this before the request goes."""
    chars = sum(len(json.dumps(m.get("content", ""))) for m in body.get("messages", []))
    completion = body.get("max_tokens") or body.get("max_completion_tokens") or DEFAULT_COMPLETION_TOKENS
    # A limiter count is a DynamoDB number (38 digits): an absurd max_tokens is charged as this much.
    return chars // 4 + 1 + min(int(completion), MAX_CHARGED_COMPLETION_TOKENS)


def result_line(request_id: str, custom_id: str, status_code: int, body: Any, upstream_id: str | None) -> str:
    return json.dumps(
        {
            "id": request_id,
            "custom_id": custom_id,
            "response": {"status_code": status_code, "request_id": upstream_id, "body": body},
            "error": None,
        },
        separators=(",", ":"),
    )


def error_line(
    request_id: str, custom_id: str | None, code: str, message: str, line: int | None = None
) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if line is not None:
        error["line"] = line
    return json.dumps(
        {"id": request_id, "custom_id": custom_id, "response": None, "error": error}, separators=(",", ":")
    )
