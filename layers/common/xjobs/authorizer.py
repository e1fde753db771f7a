"""The API's Lambda authorizer (REQUEST type): an API key, sent as `Authorization: Bearer <key>` (what
the openai and xAI SDKs send) or as `x-api-key`, becomes its tenant.

API Gateway answers 401 when the authorizer raises "Unauthorized" and 403 when its policy denies; the
policy allows the whole stage, so one answer holds for every route. The context carries the tenant
to the API function (`requestContext.authorizer.tenant`), and `usageIdentifierKey` names the tenant's
API Gateway key, so the usage plan's throttle and quota apply per tenant (ApiKeySourceType AUTHORIZER).

A request may carry either header, and API Gateway's authorizer cache needs every identity source to
be present, so API Gateway's cache is off; verified keys are cached here instead, per execution
environment, for AUTH_CACHE_SECONDS: a revoked key stops working within that time.
"""

import os
import threading
import time

from .tenants import TenantStore, hash_key

_cache: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()
CACHE_LIMIT = 10_000


class Unauthorized(Exception):
    def __init__(self):
        super().__init__("Unauthorized")  # the message API Gateway turns into a 401


def api_key_of(headers: dict | None) -> str:
    """The key a request carries: `Authorization: Bearer <key>`, else `x-api-key`."""
    lowered = {name.lower(): value for name, value in (headers or {}).items() if isinstance(value, str)}
    authorization = lowered.get("authorization", "").strip()
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return lowered.get("x-api-key", "").strip()


def _cache_seconds() -> float:
    return float(os.environ.get("AUTH_CACHE_SECONDS", "60"))


def _lookup(key: str) -> dict | None:
    digest, now = hash_key(key), time.monotonic()
    with _lock:
        hit = _cache.get(digest)
    if hit and hit[0] > now:
        return hit[1]
    record = TenantStore(os.environ["TENANTS_TABLE"]).authenticate(key)
    if record:
        with _lock:
            if len(_cache) >= CACHE_LIMIT:
                _cache.clear()
            _cache[digest] = (now + _cache_seconds(), record)
    return record


def authorize(event: dict) -> dict:
    key = api_key_of(event.get("headers"))
    record = _lookup(key) if key else None
    if record is None:
        raise Unauthorized()
    # arn:aws:execute-api:<region>:<account>:<api id>/<stage>/<method>/<path>: allow the whole stage.
    api_and_stage = "/".join(event["methodArn"].split("/")[:2])
    return {
        "principalId": record["tenant"],
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": f"{api_and_stage}/*"}
            ],
        },
        "context": {"tenant": record["tenant"]},
        "usageIdentifierKey": record["usage_key_value"],
    }
