"""Webhooks (xjobs.notify): signatures, URL rules and delivery to a real local receiver."""

import json
import socket
import time

import pytest

from xjobs.notify import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookRefused,
    WebhookUndelivered,
    check_webhook_url,
    deliver_webhook,
    sign,
    signature_header,
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


# -- two secrets (a rotation's grace period) ------------------------------------------------------

NEW, OLD = "whsec_new-unit-test", "whsec_old-unit-test"


def test_the_header_carries_one_signature_per_secret_newest_first():
    timestamp = now()

    header = signature_header([NEW, OLD], timestamp, BODY)

    assert header == f"{sign(NEW, timestamp, BODY)},{sign(OLD, timestamp, BODY)}"
    assert signature_header([NEW], timestamp, BODY) == sign(NEW, timestamp, BODY)  # the old format


def test_during_a_rotation_either_secret_verifies_and_no_other_does():
    timestamp = now()
    header = signature_header([NEW, OLD], timestamp, BODY)

    assert verify(NEW, timestamp, BODY, header) is True
    assert verify(OLD, timestamp, BODY, header) is True
    assert verify("whsec_another-tenant", timestamp, BODY, header) is False
    assert verify(NEW, timestamp, BODY.replace(b"job_1", b"job_2"), header) is False
    assert verify(OLD, str(int(timestamp) - 1), BODY, header) is False


def test_spaces_around_the_signatures_are_tolerated_and_a_bare_comma_is_not_a_pass():
    timestamp = now()

    assert verify(OLD, timestamp, BODY, f"{sign(NEW, timestamp, BODY)}, {sign(OLD, timestamp, BODY)}")
    assert verify(NEW, timestamp, BODY, ",") is False
    assert verify(NEW, timestamp, BODY, f"{sign(OLD, timestamp, BODY)},") is False


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
# Names resolve through a fixed table (a resolver standing in for DNS), so no test sends a query
# anywhere; addresses are refused by reading them, never by connecting to them.

DNS = {
    "hooks.example.com": ["93.184.215.14"],
    "hooks6.example.com": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "rebind.example.com": ["93.184.215.14", "10.0.0.7"],  # one public, one private answer
    "private.example.com": ["10.1.2.3"],
    "metadata.example.com": ["169.254.169.254"],
    "loopback.example.com": ["127.0.0.1"],
}


def fake_dns(host, port, type=0, **_):
    if host not in DNS:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    family = {4: socket.AF_INET, 6: socket.AF_INET6}
    return [(family[":" in a and 6 or 4], type, 6, "", (a, port)) for a in DNS[host]]


def check(url: str, **options) -> str | None:
    return check_webhook_url(url, **({"allow_http": False, "resolve": fake_dns} | options))


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/xjobs", "https://hooks.example.com:443/a?b=c", "https://93.184.215.14/"],
)
def test_https_urls_on_public_addresses_are_accepted(url):
    assert check(url) is None


def test_http_is_refused_unless_allowed():
    assert check("http://hooks.example.com/x") == "must be an https URL"
    assert check("http://hooks.example.com/x", allow_http=True) is None


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/x", "file:///etc/passwd", "hooks.example.com", ""])
def test_other_schemes_are_refused_naming_the_allowed_ones(url):
    assert check(url, allow_http=True) == "must be an https or http URL"


@pytest.mark.parametrize("url", ["https://user:pw@hooks.example.com/", "https://user@hooks.example.com/"])
def test_credentials_in_the_url_are_refused(url):
    assert check(url) == "must not carry credentials"


@pytest.mark.parametrize("url", ["https://", "https:///path", "https://:443/"])
def test_a_url_without_a_host_is_refused(url):
    assert check(url) == "has no host"


def test_an_unparseable_url_is_refused_not_raised():
    # submission.submit_job turns the answer into a 400; an exception here becomes a 500 instead.
    try:
        problem = check("https://[hooks.example.com/x")
    except ValueError as error:
        pytest.fail(
            f"BUG notify.check_webhook_url: urlsplit raised ValueError ({error}) for a malformed URL "
            "instead of the function returning what is wrong with it"
        )
    assert problem is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[::ffff:93.184.215.14]/",  # IPv4-mapped, even of a public address
        "https://2130706433/",  # 127.0.0.1 as one number
        "https://0x7f000001/",
        "https://127.1/",
        "https://0/",
        "https://10.0.0.1/",
        "https://172.16.5.4/",
        "https://192.168.1.1/",
        "https://100.64.0.1/",  # carrier-grade NAT
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/",
        "https://[fc00::1]/",
        "https://224.0.0.1/",
        "https://[ff02::1]/",
        "https://240.0.0.1/",  # reserved
        "https://255.255.255.255/",
        "https://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1
        "https://[64:ff9b::a00:1]/",  # NAT64 around 10.0.0.1
        "https://private.example.com/",
        "https://metadata.example.com/",
        "https://loopback.example.com/",
        "https://rebind.example.com/",  # every answer must be public
    ],
)
def test_private_loopback_link_local_multicast_mapped_and_reserved_addresses_are_refused(url):
    assert check(url) == "must resolve to public addresses only"


@pytest.mark.parametrize(
    "url",
    [
        "https://localhost/",
        "https://intranet/",
        "https://metadata.google.internal/",
        "https://printer.local/",
    ],
)
def test_internal_names_are_refused_before_any_lookup(url):
    def no_lookup(*args, **kwargs):
        raise AssertionError(f"looked up {args[0]}")

    assert check(url, resolve=no_lookup) == "names an internal host"


def test_a_name_that_does_not_resolve_is_refused():
    assert check("https://nowhere.example.com/") == "has a host that does not resolve"


@pytest.mark.parametrize("url", ["https://hooks.example.com:8443/", "https://93.184.215.14:22/"])
def test_only_port_443_is_allowed_for_public_https(url):
    assert check(url) == "must use port 443"


def test_the_local_stack_may_allow_loopback_on_any_port_and_nothing_else_private():
    assert check("http://127.0.0.1:8123/hook", allow_loopback=True) is None
    assert check("http://[::1]:8123/hook", allow_loopback=True) is None
    assert check("http://localhost:8123/hook", allow_loopback=True, resolve=fake_localhost) is None
    assert check("http://10.0.0.1:8123/", allow_loopback=True) == "must resolve to public addresses only"
    assert check("https://169.254.169.254/", allow_loopback=True) == "must resolve to public addresses only"
    assert check("http://hooks.example.com/", allow_loopback=True) == "must be an https URL"


def fake_localhost(host, port, type=0, **_):
    assert host == "localhost"
    return [(socket.AF_INET, type, 6, "", ("127.0.0.1", port))]


# -- deliver_webhook -------------------------------------------------------------------------------


def deliver(url: str, message: dict, **options) -> None:
    options = {
        "event": "job.finished",
        "event_id": "evt_job_1",
        "secrets": [SECRET],
        "allow_loopback": True,
    } | options
    deliver_webhook(url, message, **options)


def test_delivery_posts_the_message_signed_and_the_receiver_can_verify_it(http_peer):
    message = {"id": "evt_job_1", "event": "job.finished", "job": {"id": "job_1", "status": "completed"}}

    deliver(http_peer.url + "/hook", message)

    assert len(http_peer.received) == 1
    request = http_peer.received[0]
    assert (request.method, request.path) == ("POST", "/hook")
    assert json.loads(request.body) == message
    assert request.headers[EVENT_HEADER] == "job.finished"
    assert request.headers[EVENT_ID_HEADER] == "evt_job_1"
    assert request.headers["Content-Type"] == "application/json"
    timestamp = request.headers[TIMESTAMP_HEADER]
    assert abs(int(timestamp) - time.time()) < 5
    assert verify(SECRET, timestamp, request.body, request.headers[SIGNATURE_HEADER]) is True
    assert verify("another-secret", timestamp, request.body, request.headers[SIGNATURE_HEADER]) is False


def test_a_delivery_during_a_rotation_is_signed_with_both_secrets(http_peer):
    deliver(http_peer.url + "/hook", {"id": "evt_job_1"}, secrets=[NEW, OLD])

    request = http_peer.received[0]
    timestamp, header = request.headers[TIMESTAMP_HEADER], request.headers[SIGNATURE_HEADER]
    assert header.count("v1=") == 2
    assert header == signature_header([NEW, OLD], timestamp, request.body)
    assert verify(NEW, timestamp, request.body, header) and verify(OLD, timestamp, request.body, header)


def test_delivery_connects_to_the_address_it_checked_with_the_name_as_host(http_peer):
    # GIVEN a name whose first answer is the (loopback) receiver and whose next answers would be
    # elsewhere: a DNS rebinding attempt
    port = int(http_peer.url.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["10.9.9.9"], ["10.9.9.9"]])

    def rebinding_dns(host, port, type=0, **_):
        return [(socket.AF_INET, type, 6, "", (a, port)) for a in next(answers)]

    # WHEN the webhook is delivered
    deliver(f"http://hooks.example.com:{port}/hook", {"ok": True}, resolve=rebinding_dns)

    # THEN it went to the address resolved once and checked, naming the host it was given
    (request,) = http_peer.received
    assert request.headers["Host"] == f"hooks.example.com:{port}"


def test_delivery_checks_the_url_again_and_refuses_without_connecting(http_peer):
    with pytest.raises(WebhookRefused, match="public addresses only"):
        deliver("https://private.example.com/hook", {"ok": True}, allow_loopback=False, resolve=fake_dns)
    with pytest.raises(WebhookRefused, match="public addresses only"):
        deliver("https://169.254.169.254/latest", {"ok": True}, allow_loopback=False)
    assert http_peer.received == []


@pytest.mark.parametrize("status", [200, 201, 204])
def test_any_2xx_answer_counts_as_delivered(http_peer, status):
    http_peer.status = status
    http_peer.body = b""

    deliver(http_peer.url, {"ok": True})

    assert len(http_peer.received) == 1


@pytest.mark.parametrize("status", [500, 404, 302])
def test_a_receiver_answering_non_2xx_raises_undelivered(http_peer, status):
    http_peer.status = status

    with pytest.raises(WebhookUndelivered, match=str(status)):
        deliver(http_peer.url, {"ok": True})

    assert len(http_peer.received) == 1, "one attempt per call: the state machine retries"


def test_an_unreachable_receiver_raises_undelivered():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(WebhookUndelivered, match="ConnectError"):
        deliver(f"http://127.0.0.1:{closed_port}/", {"ok": True})
