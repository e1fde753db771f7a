"""The per-container xAI client and secrets (read from Secrets Manager through Powertools, cached)."""

from functools import cache

from .settings import get_settings
from .xai import XaiClient

SECRET_MAX_AGE_SECONDS = 300


def secret(name: str) -> str:
    from aws_lambda_powertools.utilities import parameters  # imports boto3: only when a secret is read

    return parameters.get_secret(name, max_age=SECRET_MAX_AGE_SECONDS)


@cache
def _client(base_url: str, api_key: str) -> XaiClient:
    # Short timeouts and one quick retry: the state machine's Retry does the long backoff.
    return XaiClient(base_url, api_key, timeout=15.0, max_attempts=2)


def xai_client() -> XaiClient:
    settings = get_settings()
    return _client(settings.xai_base_url, secret(settings.xai_api_key_secret))
