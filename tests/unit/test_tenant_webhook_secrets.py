"""Each tenant's webhook signing secret (xjobs.tenants), in a tenants table on moto's server: made with
the tenant or on first use, rotated with a grace period, a retried rotation not rotating twice."""

import threading
import time

import pytest

from xjobs.tenants import TenantError, TenantStore, signing_secrets, webhook_secret_view

from .conftest import _create_table


@pytest.fixture(scope="module")
def store(dynamodb) -> TenantStore:
    return TenantStore(_create_table(dynamodb, "tenants", ("id", "S"), by_tenant=True))


def _tenant(store: TenantStore, unique) -> str:
    return store.create_tenant(name="t", usage_key_id="k", usage_key_value=unique("usage"))["tenant"]


def _tenant_from_before(store: TenantStore, unique) -> str:
    """A tenant item as tenants were made before they had a webhook secret."""
    tenant = unique("tenant")
    store.table.put_item(
        Item={"id": f"tenant#{tenant}", "tenant": tenant, "kind": "tenant", "name": "old", "created": 1}
    )
    return tenant


def test_every_tenant_gets_a_secret_of_its_own_when_it_is_made(store, unique):
    first, second = _tenant(store, unique), _tenant(store, unique)

    one, other = store.webhook_secrets(first), store.webhook_secrets(second)

    assert one["webhook_secret"].startswith("whsec_") and len(one["webhook_secret"]) == 6 + 43
    assert one["webhook_secret"] != other["webhook_secret"]
    assert store.signing_secrets(first) == [one["webhook_secret"]]
    assert webhook_secret_view(one) == {
        "object": "webhook_secret",
        "secret": one["webhook_secret"],
        "created": one["created"],
        "previous_secret": None,
        "previous_expires_at": None,
    }


def test_a_tenant_from_before_gets_one_secret_on_first_use_even_when_first_uses_race(store, unique):
    tenant = _tenant_from_before(store, unique)
    seen, start = [], threading.Barrier(4)

    def first_use():
        start.wait()
        seen.append(store.webhook_secrets(tenant)["webhook_secret"])

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(seen) == 4 and len(set(seen)) == 1
    assert store.get_tenant(tenant)["webhook_secret"] == seen[0]


def test_an_unknown_tenant_gets_no_secret_and_no_item(store, unique):
    tenant = unique("nobody")
    with pytest.raises(TenantError):
        store.webhook_secrets(tenant)
    with pytest.raises(TenantError):
        store.rotate_webhook_secret(tenant, 60)
    assert store.find_tenant(tenant) is None


def test_a_rotation_signs_with_both_secrets_until_the_grace_period_ends(store, unique):
    tenant = _tenant(store, unique)
    old = store.webhook_secrets(tenant)["webhook_secret"]

    rotated = store.rotate_webhook_secret(tenant, 3600)

    new = rotated["webhook_secret"]
    assert new != old and new.startswith("whsec_")
    assert abs(rotated["webhook_secret_previous_until"] - (time.time() + 3600)) < 5
    assert store.signing_secrets(tenant) == [new, old]
    view = webhook_secret_view(rotated)
    assert (view["secret"], view["previous_secret"]) == (new, old)
    assert view["previous_expires_at"] == rotated["webhook_secret_previous_until"]
    after = rotated["webhook_secret_previous_until"] + 1
    assert signing_secrets(rotated, now=after) == [new]
    assert webhook_secret_view(rotated, now=after)["previous_secret"] is None


def test_a_rotation_without_grace_ends_the_old_secret_at_once(store, unique):
    tenant = _tenant(store, unique)

    rotated = store.rotate_webhook_secret(tenant, 0)

    assert store.signing_secrets(tenant) == [rotated["webhook_secret"]]


def test_a_retried_rotation_rotates_once_and_rotating_again_drops_the_secret_before(store, unique):
    tenant = _tenant(store, unique)
    first = store.webhook_secrets(tenant)["webhook_secret"]

    once = store.rotate_webhook_secret(tenant, 3600, request_key="rotate-1")
    retried = store.rotate_webhook_secret(tenant, 3600, request_key="rotate-1")

    assert retried["webhook_secret"] == once["webhook_secret"]
    assert store.signing_secrets(tenant) == [once["webhook_secret"], first]
    assert "rotate-1" not in str(store.get_tenant(tenant))  # the key is kept hashed

    again = store.rotate_webhook_secret(tenant, 3600, request_key="rotate-2")
    assert store.signing_secrets(tenant) == [again["webhook_secret"], once["webhook_secret"]]
    store.rotate_webhook_secret(tenant, 3600)  # no key: a rotation, and the last key is forgotten
    assert store.rotate_webhook_secret(tenant, 3600, request_key="rotate-2")["webhook_secret"] not in (
        again["webhook_secret"],
        once["webhook_secret"],
    )
