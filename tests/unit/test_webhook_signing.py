"""Webhooks (xjobs.notify): signatures, URL rules and delivery to a real local receiver."""

import json
import socket
import time

import pytest

from xjobs.notify import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookUndelivered,
    check_webhook_url,
    deliver_webhook,
    sign,
    verify,
)

SECRET = "whsec-unit-test"
BODY = b'{"event":"job.finished","job":{"id":"job_1"}}'


def now() -> str:
    return str(int(time.time()))


# -- sign / verify ---------------------------------------------------------------------------------


def test_sign_is_hmac_sha256_hex_with_a_version_prefix():
    signature = sign(SECRET, "1700000000", BODY)

    assert signature.startswith("v1=")
    assert len(signature) == 3 + 64
    assert signature == sign(SECRET, "1700000000", BODY), "signing is deterministic"


def test_a_fresh_signature_verifies():
    timestamp = now()

    assert verify(SECRET, timestamp, BODY, sign(SECRET, timestamp, BODY)) is True


def test_a_tampered_body_does_not_verify():
    timestamp = now()
    signature = sign(SECRET, timestamp, BODY)

    assert verify(SECRET, timestamp, BODY.replace(b"job_1", b"job_2"), signature) is False


def test_another_secret_does_not_verify():
    timestamp = now()

    assert verify(SECRET, timestamp, BODY, sign("another-secret", timestamp, BODY)) is False


def test_a_changed_timestamp_does_not_verify():
    timestamp = now()
    signature = sign(SECRET, timestamp, BODY)

    assert verify(SECRET, str(int(timestamp) - 1), BODY, signature) is False


def test_a_stale_timestamp_does_not_verify_even_with_a_correct_signature():
    stale = str(int(time.time()) - 301)

    assert verify(SECRET, stale, BODY, sign(SECRET, stale, BODY)) is False


def test_the_tolerance_is_configurable():
    stale = str(int(time.time()) - 3600)

    assert verify(SECRET, stale, BODY, sign(SECRET, stale, BODY), tolerance_seconds=7200) is True


@pytest.mark.parametrize("timestamp", ["", "yesterday", "1.5e9"])
def test_a_timestamp_that_is_not_a_whole_number_does_not_verify(timestamp):
    assert verify(SECRET, timestamp, BODY, sign(SECRET, timestamp, BODY)) is False


@pytest.mark.parametrize("signature", ["", "v1=", "v1=" + "0" * 64, "garbage"])
def test_a_wrong_signature_does_not_verify(signature):
    assert verify(SECRET, now(), BODY, signature) is False


def test_a_non_ascii_signature_header_is_refused_not_raised():
    # A receiver passes the header it was sent; an attacker chooses it. verify must answer False.
    try:
        verified = verify(SECRET, now(), BODY, "v1=é")
    except TypeError as error:
        pytest.fail(
            "BUG notify.verify: a non-ASCII signature raised TypeError "
            f"({error}) instead of returning False (hmac.compare_digest refuses non-ASCII str)"
        )
    assert verified is False


# -- check_webhook_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/xjobs", "https://hooks.example.com:8443/a?b=c", "https://10.0.0.1/"]
)
def test_https_urls_are_accepted(url):
    assert check_webhook_url(url, allow_http=False) is None


def test_http_is_refused_unless_allowed():
    assert check_webhook_url("http://hooks.example.com/x", allow_http=False) == "must be an https URL"
    assert check_webhook_url("http://hooks.example.com/x", allow_http=True) is None


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "file:///etc/passwd", "hooks.example.com", ""])
def test_other_schemes_are_refused_naming_the_allowed_ones(url):
    assert check_webhook_url(url, allow_http=True) == "must be an https or http URL"


@pytest.mark.parametrize("url", ["https://user:pw@hooks.example.com/", "https://user@hooks.example.com/"])
def test_credentials_in_the_url_are_refused(url):
    assert check_webhook_url(url, allow_http=False) == "must not carry credentials"


@pytest.mark.parametrize("url", ["https://", "https:///path", "https://:443/"])
def test_a_url_without_a_host_is_refused(url):
    assert check_webhook_url(url, allow_http=False) == "has no host"


def test_an_unparseable_url_is_refused_not_raised():
    # submission.submit_job turns the answer into a 400; an exception here becomes a 500 instead.
    try:
        problem = check_webhook_url("https://[hooks.example.com/x", allow_http=False)
    except ValueError as error:
        pytest.fail(
            f"BUG notify.check_webhook_url: urlsplit raised ValueError ({error}) for a malformed URL "
            "instead of the function returning what is wrong with it"
        )
    assert problem is not None


# -- deliver_webhook -------------------------------------------------------------------------------


def test_delivery_posts_the_message_signed_and_the_receiver_can_verify_it(http_peer):
    message = {"event": "job.finished", "job": {"id": "job_1", "status": "completed"}}

    deliver_webhook(http_peer.url + "/hook", message, event="job.finished", secret=SECRET)

    assert len(http_peer.received) == 1
    request = http_peer.received[0]
    assert (request.method, request.path) == ("POST", "/hook")
    assert json.loads(request.body) == message
    assert request.headers[EVENT_HEADER] == "job.finished"
    assert request.headers["Content-Type"] == "application/json"
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert abs(int(timestamp) - time.time()) < 5
    assert verify(SECRET, timestamp, request.body, request.headers[SIGNATURE_HEADER]) is True
    assert verify("another-secret", timestamp, request.body, request.headers[SIGNATURE_HEADER]) is False


@pytest.mark.parametrize("status", [200, 201, 204])
def test_any_2xx_answer_counts_as_delivered(http_peer, status):
    http_peer.status = status
    http_peer.body = b""

    deliver_webhook(http_peer.url, {"ok": True}, event="job.finished", secret=SECRET)

    assert len(http_peer.received) == 1


@pytest.mark.parametrize("status", [500, 404, 302])
def test_a_receiver_answering_non_2xx_raises_undelivered(http_peer, status):
    http_peer.status = status

    with pytest.raises(WebhookUndelivered, match=str(status)):
        deliver_webhook(http_peer.url, {"ok": True}, event="job.finished", secret=SECRET)

    assert len(http_peer.received) == 1, "one attempt per call: the state machine retries"


def test_an_unreachable_receiver_raises_undelivered():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(WebhookUndelivered, match="ConnectError"):
        deliver_webhook(f"http://127.0.0.1:{closed_port}/", {"ok": True}, event="job.finished", secret=SECRET)
