"""The API's authorizer and the tenant store: keys in either header, hashed at rest, revocable, and
cached for AUTH_CACHE_SECONDS only."""

import time

import pytest

from xjobs import authorizer, settings
from xjobs.tenants import TenantError, TenantStore, hash_key

from .conftest import _create_table

METHOD_ARN = "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/GET/v1/jobs"


@pytest.fixture(scope="module")
def tenants_table(dynamodb) -> str:
    return _create_table(dynamodb, "tenants", ("id", "S"), by_tenant=True)


@pytest.fixture
def store(tenants_table, monkeypatch) -> TenantStore:
    for name in ("JOBS_TABLE", "IDEMPOTENCY_TABLE", "LIMITS_TABLE", "DATA_BUCKET", "TOPIC_ARN"):
        monkeypatch.setenv(name, "unused")
    monkeypatch.setenv("XAI_API_KEY_SECRET", "unused")
    monkeypatch.setenv("TENANTS_TABLE", tenants_table)
    monkeypatch.setenv("AUTH_CACHE_SECONDS", "0.5")
    settings.get_settings.cache_clear()
    authorizer._cache.clear()
    yield TenantStore(tenants_table)
    settings.get_settings.cache_clear()
    authorizer._cache.clear()


def _tenant(store: TenantStore, unique) -> tuple[str, str]:
    tenant = store.create_tenant(name="t", usage_key_id="k1", usage_key_value=unique("usage"))["tenant"]
    key, _ = store.create_key(tenant)
    return tenant, key


def _event(**headers) -> dict:
    return {"type": "REQUEST", "methodArn": METHOD_ARN, "headers": headers}


def test_a_bearer_key_is_its_tenant_allowed_on_the_whole_stage(store, unique):
    tenant, key = _tenant(store, unique)
    answer = authorizer.authorize(_event(Authorization=f"Bearer {key}"))
    assert answer["principalId"] == tenant and answer["context"] == {"tenant": tenant}
    statement = answer["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"] == "arn:aws:execute-api:us-east-1:123456789012:abc123/prod/*"
    assert answer["usageIdentifierKey"] == store.get_tenant(tenant)["usage_key_value"]


def test_x_api_key_works_in_any_case_and_bearer_wins(store, unique):
    tenant, key = _tenant(store, unique)
    assert authorizer.authorize(_event(**{"X-Api-Key": key}))["principalId"] == tenant
    assert (
        authorizer.authorize(_event(authorization=f"bearer  {key}", **{"x-api-key": "xj-other"}))[
            "principalId"
        ]
        == tenant
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic abc"},
        {"x-api-key": "xj-unknown"},
        {"x-api-key": "sk-x"},
    ],
)
def test_a_missing_or_unknown_key_is_unauthorized(store, headers):
    with pytest.raises(authorizer.Unauthorized) as refused:
        authorizer.authorize(_event(**headers))
    assert str(refused.value) == "Unauthorized"  # the message API Gateway turns into a 401


def test_a_revoked_key_is_refused_once_the_cache_ends_and_the_tenant_keeps_its_other_key(store, unique):
    tenant, old = _tenant(store, unique)
    new, _ = store.create_key(tenant, name="next")
    authorizer.authorize(_event(Authorization=f"Bearer {old}"))
    store.revoke_key(tenant, old[:12])
    assert authorizer.authorize(_event(Authorization=f"Bearer {old}"))["principalId"] == tenant  # cached
    time.sleep(0.6)
    with pytest.raises(authorizer.Unauthorized):
        authorizer.authorize(_event(Authorization=f"Bearer {old}"))
    assert authorizer.authorize(_event(Authorization=f"Bearer {new}"))["principalId"] == tenant


def test_keys_are_kept_as_hashes_and_revoked_by_an_unambiguous_prefix(store, unique, dynamodb, tenants_table):
    tenant, key = _tenant(store, unique)
    second, _ = store.create_key(tenant)
    stored = str(dynamodb.scan(TableName=tenants_table)["Items"])
    assert key not in stored and second not in stored and hash_key(key) in stored
    with pytest.raises(TenantError, match="give more of it"):
        store.revoke_key(tenant, "xj-")
    with pytest.raises(TenantError, match="no key starting"):
        store.revoke_key(tenant, "xj-0000000000")
    assert store.revoke_key(tenant, second)["prefix"] == second[:12]  # the whole key names exactly one
    assert store.authenticate(second) is None and store.authenticate(key)["tenant"] == tenant


def test_a_tenant_id_is_kept_once(store, unique):
    tenant = unique("former-api-key-id")
    store.create_tenant(name="a", usage_key_id="k", usage_key_value="v", tenant_id=tenant)
    with pytest.raises(TenantError, match="exists already"):
        store.create_tenant(name="b", usage_key_id="k", usage_key_value="v", tenant_id=tenant)
    with pytest.raises(TenantError, match="tenant id"):
        store.create_tenant(name="c", usage_key_id="k", usage_key_value="v", tenant_id="no spaces")
