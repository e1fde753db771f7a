"""Announcing finished jobs: one SNS message per job, and a signed webhook when the job asked for one.

Webhook signature: ``X-Xjobs-Signature: v1=<hex>`` where hex is HMAC-SHA256 over
``"<X-Xjobs-Timestamp>.<raw body>"`` keyed with the deployment's webhook signing secret.
"""

import hashlib
import hmac
import json
import time
from urllib.parse import urlsplit

from . import aws
from .observability import logger, metric

SIGNATURE_HEADER = "X-Xjobs-Signature"
TIMESTAMP_HEADER = "X-Xjobs-Timestamp"
EVENT_HEADER = "X-Xjobs-Event"
WEBHOOK_TIMEOUT_SECONDS = 10.0


class WebhookUndelivered(RuntimeError):
    """The receiver did not answer 2xx; the state machine retries with backoff."""


def publish(topic_arn: str, message: dict, *, event: str, kind: str, status: str, tenant: str) -> str:
    attributes = {"event": event, "kind": kind, "status": status, "tenant": tenant}
    reply = aws.client("sns").publish(
        TopicArn=topic_arn,
        Message=json.dumps(message, separators=(",", ":")),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in attributes.items()},
    )
    logger.info("notice published", extra={"event": event, "status": status, "tenant": tenant})
    metric("NoticesSent", Channel="sns", Event=event)
    return reply["MessageId"]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_seconds: int = 300) -> bool:
    """For receivers: check a delivery's signature and that it is fresh."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    expected = sign(secret, timestamp, body).encode()
    return age <= tolerance_seconds and hmac.compare_digest(expected, signature.encode())


def callback_token(secret: str, job_id: str) -> str:
    """The token in a job's upstream callback URL: only whoever was given the URL can wake the job."""
    return hmac.new(secret.encode(), b"callback." + job_id.encode(), hashlib.sha256).hexdigest()


def callback_url(base_url: str, job_id: str, secret: str) -> str:
    return f"{base_url.rstrip('/')}/v1/callbacks/xai/{job_id}?token={callback_token(secret, job_id)}"


def check_callback_token(secret: str, job_id: str, token: str) -> bool:
    return hmac.compare_digest(callback_token(secret, job_id).encode(), token.encode())


def check_webhook_url(url: str, *, allow_http: bool) -> str | None:
    """None if the URL may receive webhooks, else what is wrong with it."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "is not a valid URL"
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return f"must be an {' or '.join(schemes)} URL"
    if not host:
        return "has no host"
    if parts.username or parts.password:
        return "must not carry credentials"
    return None


def deliver_webhook(url: str, message: dict, *, event: str, secret: str) -> None:
    import httpx  # only here: most imports of this module (the API, Poll, Park) send no webhook

    body = json.dumps(message, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: event,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS)
        problem = (
            None if 200 <= response.status_code < 300 else f"webhook receiver answered {response.status_code}"
        )
    except httpx.HTTPError as exc:
        problem = f"webhook delivery failed: {type(exc).__name__}"
    if problem:
        # The state machine retries Finish with backoff: each failed attempt leaves this line.
        logger.warning("webhook not delivered; it will be retried", extra={"problem": problem})
        metric("NoticeFailures", Channel="webhook")
        raise WebhookUndelivered(problem)
    metric("NoticesSent", Channel="webhook", Event=event)
