"""Signed webhooks: delivered once the job ends, retried with backoff while the receiver fails, signed
with the tenant's own secret, which the tenant reads and rotates through the API."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from xjobs.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

from .conftest import PARAMETERS
from .helpers import wait_for_status

GRACE_SECONDS = int(PARAMETERS["WebhookSecretGraceSeconds"])
VIDEO = {"prompt": "a kite"}


class Receiver:
    """A real HTTP endpoint on loopback that answers `failures` 500s, then 204s."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.deliveries: list[dict] = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.deliveries.append({"headers": dict(self.headers), "body": body})
                failing = len(receiver.deliveries) <= receiver.failures
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if not failing:
                    receiver.received.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/xjobs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def webhook_of(client: httpx.Client, body: dict | None = None) -> tuple[str, dict]:
    """Submit a video job with a webhook to a new receiver; its id and the one delivery."""
    receiver = Receiver()
    try:
        job_id = client.post("/v1/videos/generations", json={**(body or VIDEO), "webhook_url": receiver.url})
        job_id = job_id.json()["id"]
        assert receiver.received.wait(30), "no webhook delivered"
    finally:
        receiver.close()
    (delivery,) = receiver.deliveries
    return job_id, delivery


def verifies(secret: str, delivery: dict) -> bool:
    headers = delivery["headers"]
    return verify(secret, headers[TIMESTAMP_HEADER], delivery["body"], headers[SIGNATURE_HEADER])


def signatures(delivery: dict) -> list[str]:
    return delivery["headers"][SIGNATURE_HEADER].split(",")


def test_webhook_is_signed_and_carries_the_finished_job(api):
    secret = api.get("/v1/webhook_secret").json()["secret"]

    job_id, delivery = webhook_of(api)

    body = json.loads(delivery["body"])
    assert body["event"] == "job.finished"
    assert body["id"] == f"evt_{job_id}" == delivery["headers"]["X-Xjobs-Event-Id"]  # signed in the body
    assert body["job"]["id"] == job_id and body["job"]["status"] == "completed"
    assert len(signatures(delivery)) == 1
    assert verifies(secret, delivery)
    assert not verifies("another-secret", delivery)
    assert wait_for_status(api, job_id)["status"] == "completed"


def test_a_tenants_secret_verifies_its_own_webhooks_and_not_another_tenants(new_tenant):
    a, b = new_tenant(), new_tenant()
    secret_a, secret_b = (t.get("/v1/webhook_secret").json()["secret"] for t in (a, b))

    (_, from_a), (_, from_b) = webhook_of(a), webhook_of(b)

    assert secret_a != secret_b
    assert verifies(secret_a, from_a) and not verifies(secret_b, from_a)
    assert verifies(secret_b, from_b) and not verifies(secret_a, from_b)


def test_a_tenant_from_before_gets_its_secret_on_its_first_webhook(stack):
    tenant, key = stack.create_tenant(name="from-before")
    stack.client("dynamodb").update_item(  # as tenants were made before they had a webhook secret
        TableName=stack.resources.physical["TenantsTable"],
        Key={"id": {"S": f"tenant#{tenant}"}},
        UpdateExpression="REMOVE webhook_secret, webhook_secret_created",
    )
    with httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        _, delivery = webhook_of(client)  # Finish makes the secret
        secret = client.get("/v1/webhook_secret").json()["secret"]

    assert secret.startswith("whsec_")
    assert verifies(secret, delivery)


def test_a_rotation_signs_with_both_secrets_for_the_grace_period_then_the_new_one(new_tenant, caplog):
    tenant = new_tenant()
    old = tenant.get("/v1/webhook_secret").json()

    before = time.time()
    rotated = tenant.post("/v1/webhook_secret/rotate")
    _, during = webhook_of(tenant)

    assert rotated.status_code == 200
    new = rotated.json()
    assert new["secret"] != old["secret"] and new["previous_secret"] == old["secret"]
    assert int(before) + GRACE_SECONDS <= new["previous_expires_at"] <= before + GRACE_SECONDS + 2
    assert int(during["headers"][TIMESTAMP_HEADER]) < new["previous_expires_at"], "delivered too late"
    assert len(signatures(during)) == 2
    assert verifies(new["secret"], during) and verifies(old["secret"], during)

    time.sleep(max(0.0, new["previous_expires_at"] - time.time()) + 1)
    _, after = webhook_of(tenant)

    assert len(signatures(after)) == 1
    assert verifies(new["secret"], after) and not verifies(old["secret"], after)
    assert tenant.get("/v1/webhook_secret").json() == new | {
        "previous_secret": None,
        "previous_expires_at": None,
    }
    # The functions' log records, with every key they carry: the rotation was logged, no secret was.
    logged = [f"{r.getMessage()} {r.__dict__}" for r in caplog.records]
    assert any("webhook secret rotated" in line for line in logged)
    assert not [line for line in logged if old["secret"] in line or new["secret"] in line]


def test_a_retried_rotation_rotates_once_and_no_grace_ends_the_old_secret_at_once(new_tenant):
    tenant = new_tenant()
    first = tenant.get("/v1/webhook_secret").json()["secret"]
    retry = {"Idempotency-Key": "rotate-after-a-leak"}

    once = tenant.post("/v1/webhook_secret/rotate", json={"grace_seconds": 0}, headers=retry).json()
    again = tenant.post("/v1/webhook_secret/rotate", json={"grace_seconds": 0}, headers=retry).json()

    assert again["secret"] == once["secret"] != first
    assert once["previous_secret"] is None and once["previous_expires_at"] is None
    _, delivery = webhook_of(tenant)
    assert signatures(delivery) and len(signatures(delivery)) == 1
    assert verifies(once["secret"], delivery) and not verifies(first, delivery)


@pytest.mark.parametrize(
    "body",
    [
        '{"grace_seconds": -1}',
        '{"grace_seconds": 9999999}',
        '{"grace_seconds": true}',
        '{"grace": 5}',
        "[1]",
        "{",
    ],
)
def test_a_bad_rotation_is_a_400_and_rotates_nothing(api, body):
    before = api.get("/v1/webhook_secret").json()

    reply = api.post("/v1/webhook_secret/rotate", content=body, headers={"Content-Type": "application/json"})

    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert "grace" in reply.json()["error"]["message"] or "JSON" in reply.json()["error"]["message"]
    assert api.get("/v1/webhook_secret").json() == before


def test_the_secret_routes_need_a_key_and_show_only_the_callers_secret(stack, new_tenant):
    a, b = new_tenant(), new_tenant()
    secret_a = a.get("/v1/webhook_secret").json()["secret"]
    with httpx.Client(base_url=stack.api_url, timeout=30) as anonymous:
        refused = [anonymous.get("/v1/webhook_secret"), anonymous.post("/v1/webhook_secret/rotate")]
        wrong_key = anonymous.get("/v1/webhook_secret", headers={"Authorization": "Bearer xj-not-a-key"})

    assert [r.status_code for r in refused + [wrong_key]] == [401, 401, 401]
    assert all(secret_a not in r.text for r in refused + [wrong_key])
    rotated_b = b.post("/v1/webhook_secret/rotate").json()
    assert secret_a not in json.dumps(rotated_b) and secret_a not in b.get("/v1/webhook_secret").text
    assert a.get("/v1/webhook_secret").json()["secret"] == secret_a  # b's rotation left a's alone
    assert a.get("/v1/webhook_secret").json()["previous_secret"] is None


def test_failing_receiver_gets_retries_until_it_accepts(api, inbox):
    receiver = Receiver(failures=2)
    job_id = api.post(
        "/v1/chat/completions",
        json={
            "model": "grok-4",
            "deferred": True,
            "messages": [{"role": "user", "content": "hook"}],
            "webhook_url": receiver.url,
        },
    ).json()["id"]
    assert receiver.received.wait(60), f"only {len(receiver.deliveries)} failed deliveries"
    receiver.close()
    assert len(receiver.deliveries) == 3
    assert len({d["body"] for d in receiver.deliveries}) == 1  # the same message each time
    assert len(inbox.for_job(job_id)) == 1  # retrying the webhook never republishes to SNS
