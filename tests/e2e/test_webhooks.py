"""Signed webhooks: delivered once the job ends, retried with backoff while the receiver fails."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from xjobs.notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

from .helpers import wait_for_status


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


@pytest.fixture
def signing_secret(stack):
    arn = stack.resources.physical["WebhookSigningSecret"]
    return stack.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def test_webhook_is_signed_and_carries_the_finished_job(api, signing_secret):
    receiver = Receiver()
    job_id = api.post(
        "/v1/videos/generations", json={"prompt": "a kite", "webhook_url": receiver.url}
    ).json()["id"]
    assert receiver.received.wait(30), "no webhook delivered"
    receiver.close()

    (delivery,) = receiver.deliveries
    body = json.loads(delivery["body"])
    assert body["event"] == "job.finished"
    assert body["job"]["id"] == job_id and body["job"]["status"] == "completed"
    assert verify(
        signing_secret,
        delivery["headers"][TIMESTAMP_HEADER],
        delivery["body"],
        delivery["headers"][SIGNATURE_HEADER],
    )
    assert not verify(
        "another-secret",
        delivery["headers"][TIMESTAMP_HEADER],
        delivery["body"],
        delivery["headers"][SIGNATURE_HEADER],
    )
    assert wait_for_status(api, job_id)["status"] == "completed"


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
