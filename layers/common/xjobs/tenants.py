"""Tenants and their API keys, in the tenants table.

A tenant has a stable id (it owns jobs, files and batches) and any number of API keys. A key is shown
once, when it is created: the table keeps only its SHA-256 (a key is 256 random bits, so a plain hash
is as strong as a slow one) and its first characters, to tell keys apart in listings. Revoking a key
or adding one never changes the tenant, so rotating keys keeps all its work.

The authorizer imports this module on every cold start: boto3's and the job store's modules are
imported where they are used, not here.

Items (one table, key `id`; index `by-tenant` on `tenant`, `id`):
    tenant#<tenant id>  {tenant, kind: "tenant", name, created, usage_key_id, usage_key_value,
                         webhook_secret, webhook_secret_created, webhook_secret_previous?,
                         webhook_secret_previous_until?, webhook_secret_rotation?}
    key#<sha256 hex>    {tenant, kind: "key", prefix, name, created, usage_key_value, revoked_at?}

Settings that belong to a tenant go on its `tenant#` item, read by `get_tenant`; the API function
knows the tenant from `requestContext.authorizer.tenant`.

Webhook secrets. Each tenant signs its webhooks with a secret of its own (`whsec_` and 256 random bits),
made with the tenant (or, for a tenant from before, on first use). The tenant reads it through the API
and rotates it there: the new secret signs from then on and the one it replaces keeps signing too, as a
second signature, until `webhook_secret_previous_until` (a grace period, so receivers switch without
losing a delivery). Rotating again drops the secret before. The secrets are HMAC keys, kept as they are
(the table is encrypted at rest): never logged, never in an error.

`usage_key_*` name the tenant's API Gateway API key: never handed to callers, it is what the
authorizer returns as `usageIdentifierKey` so API Gateway meters the tenant against its usage plan.
"""

import hashlib
import re
import secrets
import time

from . import aws
from .ids import new_id

KEY_SCHEME = "xj-"
WEBHOOK_SECRET_SCHEME = "whsec_"
PREFIX_CHARS = 12  # "xj-" and 9 random characters: enough to tell a tenant's keys apart
TENANT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class TenantError(ValueError):
    """An admin request that cannot be done; the message says why."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_SCHEME + secrets.token_urlsafe(32)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_SCHEME + secrets.token_urlsafe(32)


def webhook_secret_view(tenant: dict, now: float | None = None) -> dict:
    """A tenant's webhook secrets as the API shows them: the current one and, while a rotation's grace
    period runs, the one it replaced."""
    now = time.time() if now is None else now
    until = tenant.get("webhook_secret_previous_until", 0)
    rotating = bool(tenant.get("webhook_secret_previous")) and until > now
    return {
        "object": "webhook_secret",
        "secret": tenant["webhook_secret"],
        "created": tenant["webhook_secret_created"],
        "previous_secret": tenant["webhook_secret_previous"] if rotating else None,
        "previous_expires_at": until if rotating else None,
    }


def signing_secrets(tenant: dict, now: float | None = None) -> list[str]:
    """The secrets a webhook of the tenant is signed with now: the current one first."""
    view = webhook_secret_view(tenant, now)
    return [view["secret"]] + ([view["previous_secret"]] if view["previous_secret"] else [])


class TenantStore:
    def __init__(self, table_name: str):
        self.table = aws.table(table_name)

    def create_tenant(
        self, *, name: str, usage_key_id: str, usage_key_value: str, tenant_id: str | None = None
    ) -> dict:
        tenant_id = tenant_id or new_id("tenant")
        if not TENANT_ID.match(tenant_id):
            raise TenantError("a tenant id is 1-64 letters, digits, '-' or '_'")
        from botocore.exceptions import ClientError

        from .jobs import conditional_failure

        item = {
            "id": f"tenant#{tenant_id}",
            "tenant": tenant_id,
            "kind": "tenant",
            "name": name,
            "created": int(time.time()),
            "usage_key_id": usage_key_id,
            "usage_key_value": usage_key_value,
            "webhook_secret": new_webhook_secret(),
        }
        item["webhook_secret_created"] = item["created"]
        try:
            self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(id)")
        except ClientError as exc:
            if conditional_failure(exc):
                raise TenantError(f"tenant {tenant_id} exists already") from None
            raise
        return item

    def find_tenant(self, tenant_id: str) -> dict | None:
        from .jobs import plain

        item = self.table.get_item(Key={"id": f"tenant#{tenant_id}"}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def get_tenant(self, tenant_id: str) -> dict:
        tenant = self.find_tenant(tenant_id)
        if tenant is None:
            raise TenantError(f"no tenant {tenant_id}")
        return tenant

    def webhook_secrets(self, tenant_id: str) -> dict:
        """The tenant's item, with a webhook secret made now if it has none yet (a tenant from before
        tenants had one)."""
        tenant = self.get_tenant(tenant_id)
        if tenant.get("webhook_secret"):
            return tenant
        from botocore.exceptions import ClientError

        from .jobs import conditional_failure, plain

        try:
            item = self.table.update_item(
                Key={"id": f"tenant#{tenant_id}"},
                UpdateExpression="SET webhook_secret = :secret, webhook_secret_created = :now",
                ConditionExpression="attribute_exists(id) AND attribute_not_exists(webhook_secret)",
                ExpressionAttributeValues={":secret": new_webhook_secret(), ":now": int(time.time())},
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            return self.get_tenant(tenant_id)  # made by a concurrent first use: that one it is
        return plain(item)

    def signing_secrets(self, tenant_id: str) -> list[str]:
        """The secrets the tenant's webhooks are signed with now: the current one first."""
        return signing_secrets(self.webhook_secrets(tenant_id))

    def rotate_webhook_secret(self, tenant_id: str, grace_seconds: int, request_key: str = "") -> dict:
        """A new webhook secret for the tenant; the current one keeps signing for `grace_seconds`.
        A retry with the `request_key` (Idempotency-Key) of the last rotation rotates nothing again.
        Returns the tenant's item."""
        tenant = self.webhook_secrets(tenant_id)
        rotation = hash_key(request_key) if request_key else None
        if rotation and tenant.get("webhook_secret_rotation") == rotation:
            return tenant
        from botocore.exceptions import ClientError

        from .jobs import conditional_failure, plain

        now = int(time.time())
        values = {
            ":secret": new_webhook_secret(),
            ":now": now,
            ":current": tenant["webhook_secret"],
            ":until": now + grace_seconds,
        }
        update = (
            "SET webhook_secret = :secret, webhook_secret_created = :now, "
            "webhook_secret_previous = :current, webhook_secret_previous_until = :until"
        )
        # The last rotation's Idempotency-Key (hashed), so that only a retry of that one is recognised.
        if rotation:
            update += ", webhook_secret_rotation = :rotation"
            values[":rotation"] = rotation
        else:
            update += " REMOVE webhook_secret_rotation"
        try:
            item = self.table.update_item(
                Key={"id": f"tenant#{tenant_id}"},
                UpdateExpression=update,
                # Against the secret read: of two rotations at once, one rotates and the other is told
                # the outcome (rotating twice would end the first secret at once).
                ConditionExpression="webhook_secret = :current",
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )["Attributes"]
        except ClientError as exc:
            if not conditional_failure(exc):
                raise
            return self.get_tenant(tenant_id)
        return plain(item)

    def list_tenants(self) -> list[dict]:
        from .jobs import plain

        items, start = [], {}
        while True:
            page = self.table.scan(**start)
            items += [plain(i) for i in page["Items"] if i.get("kind") == "tenant"]
            if "LastEvaluatedKey" not in page:
                return sorted(items, key=lambda i: i["created"])
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def create_key(self, tenant_id: str, *, name: str = "") -> tuple[str, dict]:
        """A new key for the tenant: returns the key itself (shown this once) and its record."""
        tenant = self.get_tenant(tenant_id)
        key = new_key()
        item = {
            "id": f"key#{hash_key(key)}",
            "tenant": tenant_id,
            "kind": "key",
            "prefix": key[:PREFIX_CHARS],
            "name": name,
            "created": int(time.time()),
            "usage_key_value": tenant["usage_key_value"],
        }
        self.table.put_item(Item=item, ConditionExpression="attribute_not_exists(id)")
        return key, item

    def list_keys(self, tenant_id: str) -> list[dict]:
        from boto3.dynamodb.conditions import Key

        from .jobs import plain

        items, start = [], {}
        while True:
            page = self.table.query(
                IndexName="by-tenant", KeyConditionExpression=Key("tenant").eq(tenant_id), **start
            )
            items += [plain(i) for i in page["Items"] if i.get("kind") == "key"]
            if "LastEvaluatedKey" not in page:
                return sorted(items, key=lambda i: i["created"])
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}

    def revoke_key(self, tenant_id: str, prefix: str) -> dict:
        """Revoke the tenant's one key that starts with ``prefix`` (as listed)."""
        matches = [k for k in self.list_keys(tenant_id) if k["prefix"].startswith(prefix[:PREFIX_CHARS])]
        if len(prefix) > PREFIX_CHARS:  # the whole key: exactly that one
            matches = [k for k in matches if k["id"] == f"key#{hash_key(prefix)}"]
        if not matches:
            raise TenantError(f"tenant {tenant_id} has no key starting {prefix!r}")
        if len(matches) > 1:
            raise TenantError(f"{len(matches)} keys of tenant {tenant_id} start {prefix!r}: give more of it")
        key = matches[0]
        if "revoked_at" not in key:
            key["revoked_at"] = int(time.time())
            self.table.update_item(
                Key={"id": key["id"]},
                UpdateExpression="SET revoked_at = :now",
                ExpressionAttributeValues={":now": key["revoked_at"]},
            )
        return key

    def authenticate(self, key: str) -> dict | None:
        """The record of a live key, or None for an unknown or revoked one."""
        if not key.startswith(KEY_SCHEME) or len(key) > 200:
            return None
        item = self.table.get_item(Key={"id": f"key#{hash_key(key)}"}).get("Item")
        if not item or item.get("kind") != "key" or "revoked_at" in item:
            return None
        return {"tenant": item["tenant"], "usage_key_value": item["usage_key_value"]}
