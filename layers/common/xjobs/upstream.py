"""The per-container xAI client and secrets (read from Secrets Manager through Powertools, cached)."""

from functools import cache

from .account import Account
from .limiter import CHAT_WINDOW_SECONDS, AdaptiveRate, FairShare, RateLimiter
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


@cache
def _chat_rate(table_name: str, requests_per_minute: int, tokens_per_minute: int) -> AdaptiveRate:
    return AdaptiveRate(table_name, CHAT_SCOPE, requests_per_minute, tokens_per_minute)


def chat_rate() -> AdaptiveRate:
    """The chat limits every worker and deferred-chat poll shares (see limiter.AdaptiveRate)."""
    settings = get_settings()
    return _chat_rate(
        settings.limits_table, settings.chat_requests_per_minute, settings.chat_tokens_per_minute
    )


def learn_limits(limits) -> None:
    """Take the limits xAI's x-ratelimit-limit-* headers state (when it states them)."""
    if limits.limit_requests or limits.limit_tokens:
        chat_rate().stated(limits.limit_requests, limits.limit_tokens)


def chat_limiter() -> RateLimiter:
    """The one limiter every chat request (batch work, deferred-chat polls) goes through, at the rate
    the account is believed to allow now."""
    rate = chat_rate().read()
    return RateLimiter(
        get_settings().limits_table,
        CHAT_SCOPE,
        rate.requests_per_minute / 60,
        rate.tokens_per_minute / 60,
        epoch=rate.epoch,
        window_seconds=CHAT_WINDOW_SECONDS,
    )


@cache
def _fair_share(table_name: str, cap: float) -> FairShare:
    return FairShare(table_name, CHAT_SCOPE, cap)


def fair_share() -> FairShare:
    """The tenants with chat work waiting, and each one's share of the chat limits (limiter.FairShare)."""
    settings = get_settings()
    return _fair_share(settings.limits_table, settings.tenant_max_share)


def tenant_limiter(tenant: str, share: float) -> RateLimiter | None:
    """The limiter of one tenant's chat requests at its ``share`` of the account's rate, taken before
    the account's own (chat_limiter); None for a share of the whole rate."""
    if share >= 1.0:
        return None
    rate = chat_rate().read()
    return RateLimiter(
        get_settings().limits_table,
        f"{CHAT_SCOPE}#tenant#{tenant}",
        rate.requests_per_minute * share / 60,
        rate.tokens_per_minute * share / 60,
        epoch=rate.epoch,
        window_seconds=CHAT_WINDOW_SECONDS,
        metric_scope=f"{CHAT_SCOPE}#tenant",
    )


def rate_limited(exc, limiter: RateLimiter) -> float:
    """A 429 on a chat call: learn from it; returns how long the caller should hold back at least.

    A 429 that states a wait holds every caller back for it; one that states nothing (xAI's usual
    answer) cuts the shared rate instead."""
    learn_limits(exc.limits)
    if exc.stated:
        limiter.block(exc.retry_after)
        return exc.retry_after
    window = limiter.last_window
    limiter.count_refused(window)
    chat_rate().cut(limiter.epoch, lambda: limiter.accepted_per_minute(window))
    return 0.0


@cache
def _account(table_name: str, topic_arn: str, probe_seconds: float) -> Account:
    return Account(table_name, topic_arn, probe_seconds)


def account() -> Account:
    """Whether the xAI account is blocked (out of credits), as every Lambda sees it."""
    settings = get_settings()
    return _account(settings.limits_table, settings.topic_arn, settings.account_probe_seconds)
