"""Tenants and keys as a user and an operator meet them: Bearer and x-api-key, rotation, revocation,
keys stored hashed, the admin command line, per-tenant limits, and every tenant seeing only its own work."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from .helpers import wait_for_status

REPO = Path(__file__).resolve().parents[2]

VIDEO = {"prompt": "a lighthouse in a storm"}
AUTH_CACHE_SECONDS = 1  # the e2e stack's AuthCacheSeconds


def _client(stack, key: str, header: str = "bearer") -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    return httpx.Client(base_url=stack.api_url, headers=headers, timeout=30)


def test_bearer_and_x_api_key_are_the_same_tenant(stack):
    _, key = stack.create_tenant(name="both-headers")
    job_id = _client(stack, key, "bearer").post("/v1/videos/generations", json=VIDEO).json()["id"]
    listed = _client(stack, key, "x-api-key").get("/v1/jobs").json()["data"]
    assert [job["id"] for job in listed] == [job_id]
    assert _client(stack, key, "x-api-key").get(f"/v1/jobs/{job_id}").status_code == 200


def test_a_rotated_key_keeps_the_tenants_jobs_and_the_revoked_one_is_refused(stack):
    tenant, old_key = stack.create_tenant(name="rotating")
    old = _client(stack, old_key)
    job_id = old.post("/v1/videos/generations", json=VIDEO).json()["id"]
    tenants = stack.admin().tenants
    new_key, _ = tenants.create_key(tenant, name="rotated")
    tenants.revoke_key(tenant, old_key[:12])
    time.sleep(AUTH_CACHE_SECONDS + 0.2)

    refused = old.get(f"/v1/jobs/{job_id}")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    sdk = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=old_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.batches.list()

    new = _client(stack, new_key)
    assert wait_for_status(new, job_id)["status"] == "completed"
    assert [job["id"] for job in new.get("/v1/jobs").json()["data"]] == [job_id]


def test_keys_are_stored_only_as_hashes(stack):
    tenant, key = stack.create_tenant(name="hashed")
    table = stack.resources.physical["TenantsTable"]
    items = stack.client("dynamodb").scan(TableName=table)["Items"]
    assert key not in json.dumps(items)
    listed = stack.admin().tenants.list_keys(tenant)
    assert [k["id"] for k in listed] == [f"key#{hashlib.sha256(key.encode()).hexdigest()}"]
    assert listed[0]["prefix"] == key[:12]


def test_another_tenants_job_is_a_404(stack, api):
    job_id = api.post("/v1/videos/generations", json=VIDEO).json()["id"]
    _, key = stack.create_tenant(name="stranger")
    stranger = _client(stack, key)
    assert stranger.get(f"/v1/jobs/{job_id}").json()["error"]["code"] == "not_found"
    assert stranger.get(f"/v1/jobs/{job_id}").status_code == 404
    assert stranger.get(f"/v1/chat/deferred-completion/{job_id}").status_code == 404


def _run_admin(stack, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The admin command as the README runs it from a checkout."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps(stack.info()))
    return subprocess.run(
        [sys.executable, "-m", "xjobs.admin", "--state-file", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": "layers/common"},
    )


def _admin(stack, tmp_path, *args: str) -> dict | list:
    done = _run_admin(stack, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_admin_command_creates_lists_and_revokes(stack, tmp_path):
    created = _admin(stack, tmp_path, "tenants", "create", "--name", "from-the-cli")
    tenant, key = created["tenant"], created["api_key"]
    assert _client(stack, key).get("/v1/jobs").status_code == 200
    second = _admin(stack, tmp_path, "keys", "create", tenant)["api_key"]
    listed = _admin(stack, tmp_path, "keys", "list", tenant)
    assert sorted(k["prefix"] for k in listed) == sorted([key[:12], second[:12]])
    assert key not in json.dumps(listed) and second not in json.dumps(listed)
    tenants = _admin(stack, tmp_path, "tenants", "list")
    assert tenant in [t["tenant"] for t in tenants]
    assert "whsec_" not in json.dumps(tenants)  # a tenant's webhook secret is its own: read through the API
    _admin(stack, tmp_path, "keys", "revoke", tenant, second[:12])
    time.sleep(AUTH_CACHE_SECONDS + 0.2)
    assert _client(stack, second).get("/v1/jobs").status_code == 401
    assert _client(stack, key).get("/v1/jobs").status_code == 200


def test_an_unknown_prefix_is_an_error_naming_it(stack, tmp_path):
    tenant, _ = stack.create_tenant(name="no-such-key")
    done = _run_admin(stack, tmp_path, "keys", "revoke", tenant, "xj-nothere")
    assert done.returncode == 2
    assert "no key starting 'xj-nothere'" in done.stderr


def test_per_tenant_throttle_and_quota(stack):
    limited, limited_key = stack.create_tenant(name="limited")
    _, free_key = stack.create_tenant(name="free")
    admin = stack.admin()
    from xjobs import admin as admin_module

    shown = admin_module.set_limits(admin, limited, quota=3, period="DAY")
    assert shown["own_plan"] and shown["quota"]["limit"] == 3
    time.sleep(1.1)  # the gateway reads plans once a second
    client = _client(stack, limited_key)
    statuses = [client.get("/v1/jobs").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    sdk = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=limited_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.batches.list()
    assert refused.value.code == "insufficient_quota"
    assert [_client(stack, free_key).get("/v1/jobs").status_code for _ in range(5)] == [200] * 5

    admin_module.reset_limits(admin, limited)
    time.sleep(1.1)
    assert client.get("/v1/jobs").status_code == 200


def test_a_tenants_throttle(stack):
    tenant, key = stack.create_tenant(name="throttled")
    from xjobs import admin as admin_module

    admin_module.set_limits(stack.admin(), tenant, rate=0.5, burst=2)
    time.sleep(1.1)
    client = _client(stack, key)
    statuses = [client.get("/v1/jobs").status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]
    throttled = client.get("/v1/jobs")
    assert throttled.status_code == 429 and throttled.json()["error"]["code"] == "rate_limit_exceeded"
