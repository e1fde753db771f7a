"""Fair shares of the chat limit between tenants: the share computation (xjobs.limiter.fair_shares), the
active tenants in the limits table on moto's server (FairShare), and a worker whose tenant is over its
share (xjobs.batch_worker)."""

import json
import math
import time

import boto3
import pytest

from tests.unit.conftest import LambdaContext, deliveries
from tests.unit.test_batch_ingest import request
from tests.unit.test_batch_worker import chat_calls, outcomes, returned, sent_again, sqs_event
from xjobs import batch_ingest, batch_worker, limiter, upstream
from xjobs.limiter import FairShare, fair_shares

# -- the share computation -------------------------------------------------------------------------


def test_a_tenant_alone_takes_the_whole_limit():
    assert fair_shares({"a": 1.0}) == {"a": 1.0}
    assert fair_shares({"a": 7.0}) == {"a": 1.0}


def test_tenants_of_equal_weight_share_equally():
    assert fair_shares({"a": 1.0, "b": 1.0}) == {"a": 0.5, "b": 0.5}
    assert fair_shares({"a": 1, "b": 1, "c": 1, "d": 1}) == {t: 0.25 for t in "abcd"}


def test_shares_follow_the_weights():
    shares = fair_shares({"a": 3.0, "b": 1.0})
    assert shares == {"a": 0.75, "b": 0.25}
    shares = fair_shares({"a": 2.0, "b": 1.0, "c": 1.0})
    assert shares == {"a": 0.5, "b": 0.25, "c": 0.25}


def test_a_cap_holds_a_tenant_alone_below_the_limit():
    assert fair_shares({"a": 1.0}, cap=0.4) == {"a": 0.4}


def test_what_a_capped_tenant_cannot_take_goes_to_the_others_by_their_weights():
    # a's weight alone would give it 4/6 of the limit: capped at half, the other half goes to b and c
    shares = fair_shares({"a": 4.0, "b": 1.0, "c": 3.0}, cap=0.5)
    assert shares["a"] == 0.5
    assert shares["b"] == pytest.approx(0.125) and shares["c"] == pytest.approx(0.375)
    assert sum(shares.values()) == pytest.approx(1.0)
    # c is then over the cap too, once a's share is taken out: both capped, b has the rest
    shares = fair_shares({"a": 4.0, "b": 1.0, "c": 3.0}, cap=0.4)
    assert shares == pytest.approx({"a": 0.4, "b": 0.2, "c": 0.4})


def test_when_every_tenant_is_capped_the_rest_of_the_limit_stays_unused():
    assert fair_shares({"a": 1.0, "b": 2.0}, cap=0.3) == {"a": 0.3, "b": 0.3}


def test_no_share_is_over_the_cap_and_the_shares_never_add_up_to_more_than_the_limit():
    weights = {f"t{i}": float(1 + i % 5) for i in range(23)}
    for cap in (1.0, 0.5, 0.1, 0.05, 0.01):
        shares = fair_shares(weights, cap)
        assert set(shares) == set(weights)
        assert max(shares.values()) <= cap + 1e-12
        assert sum(shares.values()) <= 1.0 + 1e-9
        heavier = [t for t in weights if weights[t] == 5.0]
        lighter = [t for t in weights if weights[t] == 1.0]
        assert min(shares[t] for t in heavier) >= max(shares[t] for t in lighter)


def test_a_tenant_of_weight_zero_or_less_takes_no_share():
    assert fair_shares({"a": 0.0, "b": 1.0}) == {"b": 1.0}


# -- the active tenants, in the limits table -------------------------------------------------------


def test_a_cap_outside_zero_to_one_is_refused(limits_table):
    for cap in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="cap"):
            FairShare(limits_table, "fair", cap)


def test_tenants_with_a_heartbeat_share_the_limit_by_their_weights_as_every_container_sees_it(
    limits_table, unique
):
    scope = unique("fair")
    first, second, reader = (FairShare(limits_table, scope) for _ in range(3))

    assert reader.share("a") == 1.0, "alone"
    first.heartbeat("a")
    second.heartbeat("b")
    FairShare(limits_table, scope).set_weight("b", 3.0)

    # another container (its own cache) sees both, and b's weight
    assert FairShare(limits_table, scope).active() == {"a": 1.0, "b": 3.0}
    assert FairShare(limits_table, scope).share("a") == 0.25
    assert FairShare(limits_table, scope).share("b") == 0.75
    # a third tenant asking counts itself in
    assert FairShare(limits_table, scope).share("c") == pytest.approx(0.2)


def test_a_weight_out_of_range_is_refused(limits_table, unique):
    for weight in (0, -1, limiter.MAX_WEIGHT + 1):
        with pytest.raises(ValueError, match="weight"):
            FairShare(limits_table, unique("fair")).set_weight("a", weight)


def test_a_tenant_whose_heartbeat_stopped_leaves_its_share_to_the_others(limits_table, unique):
    scope = unique("fair")
    FairShare(limits_table, scope, active_seconds=0.5).heartbeat("quiet")
    busy = FairShare(limits_table, scope)
    busy.heartbeat("busy")
    assert FairShare(limits_table, scope).share("busy") == 0.5

    time.sleep(0.6)

    assert FairShare(limits_table, scope).share("busy") == 1.0
    assert FairShare(limits_table, scope).active() == {"busy": 1.0}


def test_a_tenant_whose_batch_ended_leaves_its_share_at_once(limits_table, unique):
    scope = unique("fair")
    FairShare(limits_table, scope).heartbeat("a")
    ended = FairShare(limits_table, scope)
    ended.heartbeat("b")

    ended.finished("b")

    assert ended.active() == {"a": 1.0}
    assert FairShare(limits_table, scope).share("a") == 1.0


def test_a_containers_view_of_the_active_tenants_is_at_most_a_second_old(limits_table, unique):
    scope = unique("fair")
    watcher = FairShare(limits_table, scope)
    assert watcher.share("a") == 1.0
    FairShare(limits_table, scope).heartbeat("b")

    assert watcher.share("a") == 1.0, "cached"
    time.sleep(limiter.SHARES_READ_SECONDS)
    assert watcher.share("a") == 0.5


def test_entries_long_past_their_heartbeat_are_removed_from_the_item(limits_table, unique, monkeypatch):
    scope = unique("fair")
    FairShare(limits_table, scope, active_seconds=0.1).heartbeat("gone")
    FairShare(limits_table, scope).heartbeat("here")
    monkeypatch.setattr(limiter, "FORGET_SECONDS", 0.2)
    time.sleep(0.4)

    assert FairShare(limits_table, scope).active() == {"here": 1.0}

    item = boto3.resource("dynamodb").Table(limits_table).get_item(Key={"id": f"{scope}#tenants"})["Item"]
    assert "t#gone" not in item and "t#here" in item


# -- a worker over its tenant's share ---------------------------------------------------------------


def fill_tenant_windows(limits_table: str, tenant: str, seconds: float) -> None:
    """Every window of the tenant's limiter from a second ago to `seconds` from now is used up, as a
    tenant sending all its share would leave them."""
    table = boto3.resource("dynamodb").Table(limits_table)
    window_seconds = limiter.CHAT_WINDOW_SECONDS
    now = math.floor(time.time() / window_seconds)
    for window in range(now - 5, now + math.ceil(seconds / window_seconds) + 1):
        table.put_item(
            Item={"id": f"{upstream.CHAT_SCOPE}#tenant#{tenant}#{window}", "used": 100, "expires_at": 0}
        )


def limiter_items(limits_table: str, prefix: str) -> list[str]:
    items = boto3.resource("dynamodb").Table(limits_table).scan()["Items"]
    return [item["id"] for item in items if item["id"].startswith(prefix)]


def test_a_tenant_alone_goes_through_the_account_limiter_only(sim, start_batch, batch_settings):
    batch_id, messages = start_batch(request("a"), request("b"))

    # the ingest beat the tenant's heartbeat, with the tenant as each message's group
    tenant = batch_ingest.DIRECT_UPLOAD_TENANT
    assert upstream.fair_share().active(fresh=True) == {tenant: 1.0}
    assert {m["Attributes"].get("MessageGroupId") for m in messages} == {tenant}

    response = batch_worker.handle(sqs_event(messages), LambdaContext())

    assert returned(response) == set()
    assert len(chat_calls(sim)) == 2
    assert limiter_items(batch_settings.limits_table, f"{upstream.CHAT_SCOPE}#tenant#") == []
    # the batch ended: the tenant has nothing waiting, at once
    assert upstream.fair_share().active(fresh=True) == {}


def test_requests_over_their_tenants_share_go_back_at_once_and_run_when_the_other_tenant_is_gone(
    sim, start_batch, batch_settings, work_queue
):
    tenant = batch_ingest.DIRECT_UPLOAD_TENANT
    batch_id, messages = start_batch(request("a"), request("b"), request("c"))
    # GIVEN another tenant with work waiting, and this tenant's half of the rate used up
    FairShare(batch_settings.limits_table, upstream.CHAT_SCOPE, active_seconds=2.0).heartbeat("other")
    fill_tenant_windows(batch_settings.limits_table, tenant, seconds=3)

    started = time.monotonic()
    response = batch_worker.handle(sqs_event(messages), LambdaContext())
    took = time.monotonic() - started

    # THEN no request is sent; each goes back as a new message of its tenant's group, without the
    # worker waiting for the share (others' requests may be behind it in the queue)
    assert returned(response) == set()
    assert chat_calls(sim) == []
    assert took < batch_worker.SHORT_WAIT_SECONDS
    assert deliveries(work_queue) == [], "delayed"
    waiting = sent_again(work_queue, 3, within=4)
    assert len(waiting) == 3
    assert all(json.loads(m["Body"])["over_share"] == 1 for m in waiting)
    assert {m["Attributes"].get("MessageGroupId") for m in waiting} == {tenant}
    assert upstream.chat_limiter().recent(math.floor(time.time() / limiter.CHAT_WINDOW_SECONDS))[0] == 0, (
        "no account capacity taken"
    )

    # WHEN the other tenant's heartbeat has stopped, the tenant has the whole rate: all three run
    time.sleep(max(0.0, 2.2 - (time.monotonic() - started)))
    response = batch_worker.handle(sqs_event(waiting), LambdaContext())
    assert returned(response) == set()
    assert len(chat_calls(sim)) == 3
    assert all(o["ok"] for o in outcomes(upstream_store(batch_settings), batch_id).values())


def upstream_store(settings):
    from xjobs import batches

    return batches.BatchStore(settings.batches_table, settings.batch_items_table)


def test_the_backoff_of_a_request_over_its_share_grows_from_a_second_to_the_cap():
    waits = [[batch_worker.share_backoff(n) for n in range(8)] for _ in range(100)]
    assert all(0.7 <= w[0] <= 1.3 for w in waits), "about a second"
    assert all(w[2] > w[0] for w in waits), "growing"
    cap = batch_worker.MAX_SHARE_WAIT_SECONDS
    assert all(max(w) <= cap * 1.2 for w in waits) and min(w[-1] for w in waits) >= cap * 0.8


# -- a tenant's weight, set by the admin command ----------------------------------------------------


@pytest.fixture(scope="module")
def tenants_table(dynamodb) -> str:
    from tests.unit.conftest import _create_table

    return _create_table(dynamodb, "tenants", ("id", "S"), by_tenant=True)


def admin_run(deployment, *argv: str):
    from xjobs import admin

    return admin.run(admin._parser().parse_args(list(argv)), deployment)


def test_the_admin_command_sets_a_tenants_weight_that_workers_see(tenants_table, limits_table, unique):
    from xjobs import admin
    from xjobs.tenants import TenantStore

    tenant = unique("weighted")
    TenantStore(tenants_table).create_tenant(
        name="w", usage_key_id="k", usage_key_value="v", tenant_id=tenant
    )
    outputs = {"TenantsTableName": tenants_table, "UsagePlanId": "plan", "LimitsTableName": limits_table}
    deployment = admin.from_outputs(outputs, apigateway=None)

    shown = admin_run(deployment, "shares", "set", tenant, "2.5")

    assert shown == {"tenant": tenant, "share_weight": 2.5}
    shares = FairShare(limits_table, upstream.CHAT_SCOPE)
    assert shares.weight(tenant) == 2.5
    assert shares.weight(unique("unknown")) == 1.0


@pytest.mark.parametrize(
    "argv", [["nobody", "2"], ["{tenant}", "0"], ["{tenant}", "-1"], ["{tenant}", "1001"]]
)
def test_a_weight_out_of_range_or_of_an_unknown_tenant_is_refused_by_the_admin_command(
    tenants_table, limits_table, unique, argv
):
    from xjobs import admin
    from xjobs.tenants import TenantError, TenantStore

    tenant = unique("weighted")
    TenantStore(tenants_table).create_tenant(
        name="w", usage_key_id="k", usage_key_value="v", tenant_id=tenant
    )
    deployment = admin.Deployment(tenants_table, "plan", None, limits_table)
    with pytest.raises(TenantError, match="weight|no tenant"):
        admin_run(deployment, "shares", "set", *[a.format(tenant=tenant) for a in argv])
    assert FairShare(limits_table, upstream.CHAT_SCOPE).weight(tenant) == 1.0
