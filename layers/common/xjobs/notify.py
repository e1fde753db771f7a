"""Announcing finished jobs and batches: one SNS message each, and a signed webhook when a job asked
for one.

Exactly once on SNS: the announcer takes a lease on the item (a conditional write with an expiry,
as SQS's visibility timeout works), publishes, then marks it announced. A publisher that dies
holding the lease leaves it to expire, and the next attempt announces; one that finds the item
announced publishes nothing. Every message carries an event id (`evt_<job or batch id>`), the same
on every attempt, so a receiver drops the one repeat no publisher can rule out (a publish whose
reply was lost), as Stripe's webhook receivers do.

Webhook signature: ``X-Xjobs-Signature: v1=<hex>`` where hex is HMAC-SHA256 over
``"<X-Xjobs-Timestamp>.<raw body>"`` keyed with the job's tenant's webhook secret (tenants.py); the
body names the event id (also in ``X-Xjobs-Event-Id``). While the tenant rotates its secret the header
carries one signature per live secret, newest first, as Stripe's does: ``v1=<hex>,v1=<hex>``; a
receiver accepts the delivery if any of them is its secret's.

Webhook URLs are checked when a job is submitted and again at delivery: the host is resolved and
every address must be public (no private, loopback, link-local, multicast, reserved or IPv4-mapped
address); the delivery connects to the address it checked, with the name as Host and TLS SNI, so a
name that resolves elsewhere a moment later (DNS rebinding) cannot redirect it; only port 443
(80 for http where allowed). The local stack may allow loopback, on any port.
"""

import contextlib
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from . import aws
from .observability import logger, metric

SIGNATURE_HEADER = "X-Xjobs-Signature"
TIMESTAMP_HEADER = "X-Xjobs-Timestamp"
EVENT_HEADER = "X-Xjobs-Event"
EVENT_ID_HEADER = "X-Xjobs-Event-Id"
WEBHOOK_TIMEOUT_SECONDS = 10.0
# Longer than any announcer may live (Finish's timeout is 30 s; a publish gives up within 7 s).
NOTICE_LEASE_SECONDS = 60
NOTIFIED_FLAG = "notified_at"
LEASE_FIELD = "notice_lease_until"


class WebhookUndelivered(RuntimeError):
    """The receiver did not answer 2xx; the state machine retries with backoff."""


class WebhookRefused(ValueError):
    """The webhook URL may not be called (see check_webhook_url); retrying cannot help."""


class NoticeLeased(RuntimeError):
    """Another attempt holds the lease on this announcement; the state machine retries once it may
    have expired."""


def event_id(object_id: str) -> str:
    """The id of the one event a job or batch has: the same on every attempt to announce it."""
    return f"evt_{object_id}"


def announce_once(table, key: dict, publish: Callable[[], object]) -> bool:
    """Run `publish` for the item at `key` unless it was announced; True if this call announced it.
    Raises NoticeLeased while another attempt's lease runs."""
    from botocore.exceptions import ClientError

    now = time.time()
    try:
        table.update_item(
            Key=key,
            UpdateExpression="SET #lease = :until",
            ConditionExpression=(
                "attribute_not_exists(#done) AND (attribute_not_exists(#lease) OR #lease < :now)"
            ),
            ExpressionAttributeNames={"#lease": LEASE_FIELD, "#done": NOTIFIED_FLAG},
            ExpressionAttributeValues={":until": int(now + NOTICE_LEASE_SECONDS), ":now": int(now)},
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
            raise
        item = table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
        if NOTIFIED_FLAG in item:
            return False
        raise NoticeLeased(f"{key} is being announced by another attempt") from None
    try:
        publish()
    except Exception:
        # Let the next attempt publish at once. (If the publish in fact landed and only its reply was
        # lost, that attempt repeats it: the event id is the receivers' guard.)
        table.update_item(
            Key=key, UpdateExpression="REMOVE #lease", ExpressionAttributeNames={"#lease": LEASE_FIELD}
        )
        raise
    table.update_item(
        Key=key,
        UpdateExpression="SET #done = :now REMOVE #lease",
        ExpressionAttributeNames={"#lease": LEASE_FIELD, "#done": NOTIFIED_FLAG},
        ExpressionAttributeValues={":now": int(time.time())},
    )
    return True


def publish(
    topic_arn: str, message: dict, *, event: str, event_id: str, kind: str, status: str, tenant: str
) -> str:
    attributes = {"event": event, "event_id": event_id, "kind": kind, "status": status, "tenant": tenant}
    reply = aws.publisher().publish(
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


def signature_header(secrets: list[str], timestamp: str, body: bytes) -> str:
    """The X-Xjobs-Signature value: a signature with each secret, in the order given."""
    return ",".join(sign(secret, timestamp, body) for secret in secrets)


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, tolerance_seconds: int = 300) -> bool:
    """For receivers: check that one of a delivery's signatures is made with `secret` and that the
    delivery is fresh."""
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        return False
    expected = sign(secret, timestamp, body).encode()
    matches = [hmac.compare_digest(expected, part.strip().encode()) for part in signature.split(",")]
    return age <= tolerance_seconds and any(matches)


def callback_token(secret: str, job_id: str, expires: int) -> str:
    """The token in a job's upstream callback URL: whoever was given the URL can wake that job, and
    only until `expires` (epoch seconds). Keyed with the callback secret, never the webhook one."""
    mac = hmac.new(secret.encode(), f"callback.{job_id}.{expires}".encode(), hashlib.sha256).hexdigest()
    return f"v1.{expires}.{mac}"


def callback_url(base_url: str, job_id: str, secret: str, expires: int) -> str:
    token = callback_token(secret, job_id, expires)
    return f"{base_url.rstrip('/')}/v1/callbacks/xai/{job_id}?token={token}"


def check_callback_token(secret: str, job_id: str, token: str) -> bool:
    """True for a token made for this job that has not expired."""
    try:
        version, expires, _ = token.split(".")
        expires_at = int(expires)
    except ValueError:
        return False
    if version != "v1" or expires_at < time.time():
        return False
    expected = callback_token(secret, job_id, expires_at).encode()
    return hmac.compare_digest(expected, token.encode("utf-8", "replace"))


# Names that only mean something inside a network (RFC 6761, RFC 6762, RFC 8375, cloud metadata).
INTERNAL_SUFFIXES = (".internal", ".local", ".localhost", ".localdomain", ".home.arpa", ".lan", ".intranet")


@dataclass(frozen=True)
class WebhookTarget:
    scheme: str
    host: str  # the name (or address) the URL gave
    port: int
    address: str  # the checked address the delivery connects to
    path: str  # path and query


def check_webhook_url(
    url: str, *, allow_http: bool, allow_loopback: bool = False, resolve: Callable = socket.getaddrinfo
) -> str | None:
    """None if the URL may receive webhooks, else what is wrong with it."""
    try:
        webhook_target(url, allow_http=allow_http, allow_loopback=allow_loopback, resolve=resolve)
    except WebhookRefused as exc:
        return str(exc)
    return None


def webhook_target(
    url: str, *, allow_http: bool, allow_loopback: bool = False, resolve: Callable = socket.getaddrinfo
) -> WebhookTarget:
    """Where a webhook to `url` goes: its host resolved to an address that may be called. Raises
    WebhookRefused saying what is wrong. Resolving is the only traffic: nothing connects here."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        raise WebhookRefused("is not a valid URL") from None
    schemes = ("https", "http") if allow_http or allow_loopback else ("https",)
    if parts.scheme not in schemes:
        raise WebhookRefused(f"must be an {' or '.join(schemes)} URL")
    if not host:
        raise WebhookRefused("has no host")
    if parts.username or parts.password:
        raise WebhookRefused("must not carry credentials")
    default_port = 443 if parts.scheme == "https" else 80
    port = default_port if port is None else port
    literal = _address_literal(host)
    if literal is None:
        name = host.rstrip(".")
        internal = "." not in name or name.endswith(INTERNAL_SUFFIXES)
        if internal and not (allow_loopback and name == "localhost"):
            raise WebhookRefused("names an internal host")
        try:
            found = resolve(name, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise WebhookRefused("has a host that does not resolve") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
        if not addresses:
            raise WebhookRefused("has a host that does not resolve")
    else:
        addresses = [literal]
    loopback = all(a.is_loopback for a in addresses)
    for address in addresses:  # every one: the client might connect to any of them
        if not (allow_loopback and address.is_loopback) and not _public(address):
            raise WebhookRefused("must resolve to public addresses only")
    if not (allow_loopback and loopback):
        if parts.scheme == "http" and not allow_http:
            raise WebhookRefused("must be an https URL")
        if port != default_port:
            raise WebhookRefused(f"must use port {default_port}")
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return WebhookTarget(parts.scheme, host, port, str(addresses[0]), path)


def _address_literal(host: str):
    """The address a host written as one means, in any form a resolver accepts (`2130706433`,
    `0x7f.1`, `127.1`, `::ffff:127.0.0.1`); None for a name."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.split("%")[0])
    with contextlib.suppress(OSError, UnicodeError):
        return ipaddress.ip_address(socket.inet_aton(host))  # parsed here, never looked up
    return None


def _public(address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None or address in ipaddress.ip_network("64:ff9b::/96"):
            return False  # an IPv4 address in IPv6 clothing: refused rather than unwrapped
    return address.is_global and not address.is_multicast


def deliver_webhook(
    url: str,
    message: dict,
    *,
    event: str,
    event_id: str,
    secrets: list[str],
    allow_http: bool = False,
    allow_loopback: bool = False,
    resolve: Callable = socket.getaddrinfo,
) -> None:
    """POST the message, signed with each of `secrets`, to the address the URL's host resolves to now,
    checked again."""
    import httpx  # only here: most imports of this module (the API, Poll, Park) send no webhook

    target = webhook_target(url, allow_http=allow_http, allow_loopback=allow_loopback, resolve=resolve)
    body = json.dumps(message, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
    if ":" in target.host:
        host_header = f"[{target.host}]" + ("" if target.port == default_port else f":{target.port}")
    address = f"[{target.address}]" if ":" in target.address else target.address
    headers = {
        "Host": host_header,
        "Content-Type": "application/json",
        EVENT_HEADER: event,
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature_header(secrets, timestamp, body),
    }
    pinned = f"{target.scheme}://{address}:{target.port}{target.path}"
    # TLS is checked against the name (SNI and certificate), while the socket goes to the address.
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(timeout=WEBHOOK_TIMEOUT_SECONDS, follow_redirects=False) as client:
            response = client.post(pinned, content=body, headers=headers, extensions=extensions)
        ok = 200 <= response.status_code < 300
        problem = None if ok else f"webhook receiver answered {response.status_code}"
    except httpx.HTTPError as exc:
        problem = f"webhook delivery failed: {type(exc).__name__}"
    if problem:
        # The state machine retries Finish with backoff: each failed attempt leaves this line.
        logger.warning("webhook not delivered; it will be retried", extra={"problem": problem})
        metric("NoticeFailures", Channel="webhook")
        raise WebhookUndelivered(problem)
    metric("NoticesSent", Channel="webhook", Event=event)
