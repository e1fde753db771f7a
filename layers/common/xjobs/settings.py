"""Configuration from the environment. The names are set in template.yaml (Globals and per function)."""

import os
from functools import cache

from pydantic import BaseModel, Field, ValidationError


class Settings(BaseModel):
    jobs_table: str = Field(alias="JOBS_TABLE")
    idempotency_table: str = Field(alias="IDEMPOTENCY_TABLE")
    limits_table: str = Field(alias="LIMITS_TABLE")
    data_bucket: str = Field(alias="DATA_BUCKET")
    topic_arn: str = Field(alias="TOPIC_ARN")
    xai_base_url: str = Field(alias="XAI_BASE_URL", default="https://api.x.ai/v1")
    xai_video_cancel: bool = Field(alias="XAI_VIDEO_CANCEL", default=False)
    xai_api_key_secret: str = Field(alias="XAI_API_KEY_SECRET")
    allow_http_webhooks: bool = Field(alias="ALLOW_HTTP_WEBHOOKS", default=False)
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)
    callback_signing_secret: str = Field(alias="CALLBACK_SIGNING_SECRET", default="")
    callback_base_url: str = Field(alias="CALLBACK_BASE_URL", default="")
    callback_fallback_seconds: int = Field(alias="CALLBACK_FALLBACK_SECONDS", default=300, ge=1)
    state_machine_arn: str | None = Field(alias="STATE_MACHINE_ARN", default=None)
    job_timeout_default_seconds: int = Field(alias="JOB_TIMEOUT_DEFAULT_SECONDS", default=3600, ge=1)
    job_timeout_max_seconds: int = Field(alias="JOB_TIMEOUT_MAX_SECONDS", default=86400, ge=1)
    poll_min_wait_seconds: int = Field(alias="POLL_MIN_WAIT_SECONDS", default=2, ge=1)
    poll_max_wait_seconds: int = Field(alias="POLL_MAX_WAIT_SECONDS", default=60, ge=1)
    video_requests_per_second: float = Field(alias="VIDEO_REQUESTS_PER_SECOND", default=1, gt=0)
    chat_requests_per_minute: int = Field(alias="CHAT_REQUESTS_PER_MINUTE", default=1800, gt=0)
    chat_tokens_per_minute: int = Field(alias="CHAT_TOKENS_PER_MINUTE", default=10_000_000, gt=0)
    tenant_max_share: float = Field(alias="TENANT_MAX_SHARE", default=1.0, gt=0, le=1)
    account_probe_seconds: float = Field(alias="ACCOUNT_PROBE_SECONDS", default=30, gt=0)
    batches_table: str = Field(alias="BATCHES_TABLE", default="")
    batch_items_table: str = Field(alias="BATCH_ITEMS_TABLE", default="")
    work_queue_url: str = Field(alias="WORK_QUEUE_URL", default="")
    batch_finalize_function: str = Field(alias="BATCH_FINALIZE_FUNCTION", default="")
    batch_completion_window_seconds: int = Field(alias="BATCH_COMPLETION_WINDOW_SECONDS", default=86400, ge=1)
    batch_max_attempts: int = Field(alias="BATCH_MAX_ATTEMPTS", default=3, ge=1)
    batch_max_lines: int = Field(alias="BATCH_MAX_LINES", default=50_000, ge=1)
    batch_ingest_function: str = Field(alias="BATCH_INGEST_FUNCTION", default="")
    stalled_after_seconds: int = Field(alias="STALLED_AFTER_SECONDS", default=1200, ge=1)
    stalled_max_restarts: int = Field(alias="STALLED_MAX_RESTARTS", default=3, ge=0)
    tenants_table: str = Field(alias="TENANTS_TABLE", default="")
    webhook_secret_grace_seconds: int = Field(alias="WEBHOOK_SECRET_GRACE_SECONDS", default=86400, ge=0)
    files_table: str = Field(alias="FILES_TABLE", default="")
    max_upload_bytes: int = Field(alias="MAX_UPLOAD_BYTES", default=200 * 1024 * 1024, ge=1)
    file_retention_days: int = Field(alias="FILE_RETENTION_DAYS", default=7, ge=1)


class ConfigurationError(RuntimeError):
    pass


@cache
def get_settings() -> Settings:
    try:
        return Settings.model_validate(os.environ)
    except ValidationError as exc:
        problems = "; ".join(f"{err['loc'][0]}: {err['msg']}" for err in exc.errors())
        raise ConfigurationError(f"bad environment: {problems}") from None
