"""HTTP routes for the caller's webhook signing secret: read it, rotate it (see tenants.py)."""

from aws_lambda_powertools.event_handler.router import Router
from pydantic import BaseModel, ConfigDict, Field

from .api import idempotency_key_of, tenant_of
from .models import validate_body
from .observability import logger
from .settings import get_settings
from .tenants import TenantStore, webhook_secret_view

router = Router()

MAX_GRACE_SECONDS = 7 * 86400


class Rotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # How long the replaced secret keeps signing; 0 ends it at once (a leaked secret).
    grace_seconds: int | None = Field(default=None, ge=0, le=MAX_GRACE_SECONDS, strict=True)


def _store() -> TenantStore:
    return TenantStore(get_settings().tenants_table)


@router.get("/v1/webhook_secret")
def get_webhook_secret():
    return webhook_secret_view(_store().webhook_secrets(tenant_of(router)))


@router.post("/v1/webhook_secret/rotate")
def rotate_webhook_secret():
    request = validate_body(Rotation, router.current_event.body or "{}")
    tenant = tenant_of(router)
    grace = request.grace_seconds
    if grace is None:
        grace = get_settings().webhook_secret_grace_seconds
    item = _store().rotate_webhook_secret(tenant, grace, request_key=idempotency_key_of(router) or "")
    logger.info("webhook secret rotated", extra={"grace_seconds": grace})
    return webhook_secret_view(item)
