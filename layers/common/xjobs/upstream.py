"""The per-container xAI client and secrets (read from Secrets Manager through Powertools, cached)."""

from functools import cache

from .limiter import RateLimiter
from .settings import get_settings
from .xai import XaiClient

SECRET_MAX_AGE_SECONDS = 300


def secret(name: str) -> str:
    from aws_lambda_powertools.utilities import parameters  # imports boto3: only when a secret is read

    return parameters.get_secret(name, max_age=SECRET_MAX_AGE_SECONDS)


@cache
def _client(base_url: str, api_key: str, video_cancel: bool) -> XaiClient:
    # Short timeouts and one quick retry: the state machine's Retry does the long backoff.
    return XaiClient(base_url, api_key, timeout=15.0, max_attempts=2, video_cancel=video_cancel)


def xai_client() -> XaiClient:
    settings = get_settings()
    return _client(settings.xai_base_url, secret(settings.xai_api_key_secret), settings.xai_video_cancel)


CHAT_SCOPE = "xai-chat"
_learned: dict[str, int] = {}  # per container: the limits xAI's x-ratelimit-limit-* headers announced


def learn_limits(limits) -> None:
    """Correct the configured per-minute limits with what xAI says they are (when it says)."""
    if limits.limit_requests:
        _learned["requests"] = limits.limit_requests
    if limits.limit_tokens:
        _learned["tokens"] = limits.limit_tokens


def chat_limiter() -> RateLimiter:
    """The one limiter every chat request (batch work, deferred-chat polls) goes through."""
    settings = get_settings()
    requests = _learned.get("requests", settings.chat_requests_per_minute)
    tokens = _learned.get("tokens", settings.chat_tokens_per_minute)
    return RateLimiter(settings.limits_table, CHAT_SCOPE, requests / 60, tokens / 60)
