"""xjobs.xai.XaiClient against the xAI simulator, and a tiny HTTP peer for answers it never gives."""

import io
import socket
import time
import traceback

import pytest

from local.xai_simulator import SimulatorConfig, XaiSimulator
from xjobs.xai import (
    DEFERRED_CHAT,
    VIDEO_EDIT,
    VIDEO_GENERATION,
    XaiClient,
    XaiRateLimited,
    XaiRejected,
    XaiSubmitUnknown,
    XaiUnavailable,
)

VIDEO = {"model": "grok-imagine-video", "prompt": "a cat surfing a wave"}
EDIT = {"model": "grok-imagine-video", "prompt": "make it night", "video": {"url": "https://x.test/v.mp4"}}
CHAT = {"model": "grok-4", "messages": [{"role": "user", "content": "hello there"}]}
DEFERRED = {**CHAT, "deferred": True}


# -- submit and status -----------------------------------------------------------------------------


def test_submit_video_returns_the_request_id_the_simulator_created(sim, xai):
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    assert request_id
    assert sim.finish_at(request_id) is not None, "the id must be one the simulator knows"
    assert sim.count("/v1/videos/generations", status=200, method="POST") == 1


def test_submit_video_edit_goes_to_the_edits_endpoint(sim, xai):
    request_id = xai.submit(VIDEO_EDIT, EDIT)

    assert sim.finish_at(request_id) is not None
    assert sim.count("/v1/videos/edits", status=200) == 1


@pytest.mark.parametrize("seed_shapes", [False, True], ids=["real-shapes", "seed-shapes"])
def test_video_status_goes_from_pending_to_done_with_a_video_url(sim, xai, settle, seed_shapes):
    # Given a simulator answering in the real xAI shapes or in the seed documents' shapes
    sim.update(seed_shapes=seed_shapes)
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    # When the video is polled right away and again once it is finished
    first = xai.status(VIDEO_GENERATION, request_id)
    last = settle(xai, VIDEO_GENERATION, request_id)

    # Then both shapes normalise to the same UpstreamStatus
    assert first.state == "pending"
    assert first.video_url is None
    assert first.progress is None or 0 <= first.progress < 100
    assert last.state == "done"
    assert last.progress == 100
    assert last.video_url == f"{sim.url}/media/{request_id}.mp4"
    assert last.error is None


@pytest.mark.parametrize("body_rate", [0.0, 1.0], ids=["empty-202", "202-with-body"])
def test_a_pending_video_answering_202_with_or_without_a_body_is_pending(sim, xai, body_rate):
    # Regression: an empty 202 (as xAI's spec declares it) was read with .json() and the job failed
    # with JSONDecodeError while xAI went on rendering the video.
    sim.update(video_pending_body_rate=body_rate, video_duration_median=30.0)
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    status = xai.status(VIDEO_GENERATION, request_id)

    assert sim.calls[-1].status == 202
    assert status.state == "pending" and status.error is None
    if body_rate:
        assert status.progress is not None and 0 <= status.progress < 100
    else:
        assert status.progress is None


def test_a_moderated_video_fails_with_our_code_xais_message_and_its_cost(sim, xai, settle):
    sim.update(video_moderation_rate=1.0)
    request_id = xai.submit(VIDEO_GENERATION, {**VIDEO, "duration": 2})

    status = settle(xai, VIDEO_GENERATION, request_id)

    assert sim.calls[-1].status == 400
    assert status.state == "failed" and status.video_url is None
    assert status.error == {
        "code": "content_moderated",
        "message": "Generated video rejected by content moderation.",
        "cost_in_usd_ticks": 2 * 500_000_000,
    }


def test_an_expired_video_reports_expired_with_a_clear_error(sim, xai, settle):
    sim.update(video_expired_rate=1.0)
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    status = settle(xai, VIDEO_GENERATION, request_id)

    assert status.state == "expired"
    assert status.error["code"] == "expired" and "no longer available" in status.error["message"]


def test_a_400_on_a_video_poll_that_is_not_moderation_is_a_rejection(http_peer, make_client):
    http_peer.status = 400
    http_peer.body = b'{"code": "Client specified an invalid argument", "error": "Bad request id"}'

    with pytest.raises(XaiRejected) as caught:
        make_client(http_peer.url).status(VIDEO_GENERATION, "some-id")

    assert (caught.value.code, caught.value.message) == ("invalid_argument", "Bad request id")


def test_flat_error_bodies_give_the_grpc_status_name_and_xais_text(sim, xai):
    with pytest.raises(XaiRejected) as caught:
        xai.chat({**CHAT, "presence_penalty": 0.5})

    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_argument"
    assert caught.value.message == "Model grok-4 does not support parameter presencePenalty."


@pytest.mark.sends_invalid_requests
def test_a_plain_text_422_keeps_its_text(sim, xai):
    with pytest.raises(XaiRejected) as caught:
        xai.submit(VIDEO_GENERATION, {"model": "grok-imagine-video"})

    assert caught.value.status_code == 422 and caught.value.code == "http_422"
    assert "missing field `prompt`" in caught.value.message


def test_a_fresh_seed_shaped_simulator_gives_the_same_answers(make_client, settle):
    config = SimulatorConfig(seed_shapes=True, video_duration_median=0.2, video_duration_sigma=0.0)
    with XaiSimulator(config) as seed_sim:
        client = make_client(seed_sim.base_url)
        request_id = client.submit(VIDEO_GENERATION, VIDEO)
        status = settle(client, VIDEO_GENERATION, request_id)

    assert status.state == "done"
    assert status.video_url.endswith(f"/media/{request_id}.mp4")


def test_finished_video_downloads_as_mp4_bytes(sim, xai, settle):
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)
    status = settle(xai, VIDEO_GENERATION, request_id)
    sink = io.BytesIO()

    written = xai.download(status.video_url, sink)

    assert written == len(sink.getvalue()) > 0
    assert sink.getvalue()[4:8] == b"ftyp"


def test_failed_video_reports_the_error_code_and_message(sim, xai, settle):
    sim.update(video_failure_rate=1.0)
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    status = settle(xai, VIDEO_GENERATION, request_id)

    assert status.state == "failed"
    assert status.video_url is None
    assert status.error == {"code": "internal_error", "message": "Video generation failed (simulated)"}


@pytest.mark.parametrize("seed_shapes", [False, True], ids=["real-shapes", "seed-shapes"])
def test_deferred_chat_is_pending_then_done_then_expired_because_it_is_handed_out_once(
    sim, xai, settle, seed_shapes
):
    sim.update(seed_shapes=seed_shapes)
    request_id = xai.submit(DEFERRED_CHAT, DEFERRED)

    first = xai.status(DEFERRED_CHAT, request_id)
    done = settle(xai, DEFERRED_CHAT, request_id)
    again = xai.status(DEFERRED_CHAT, request_id)

    assert first.state == "pending"
    assert done.state == "done"
    assert done.result["id"] == request_id
    assert done.result["choices"][0]["message"]["content"] == "echo: hello there"
    assert again.state == "expired"
    assert again.result is None
    assert again.error["code"] == "expired"
    assert sim.count(f"/v1/chat/deferred-completion/{request_id}", status=200) == 1


def test_chat_returns_the_completion_and_the_rate_limit_headers(sim, xai):
    sim.update(requests_per_minute=6000, rate_limit_headers=True)  # headers: an extension xAI lacks

    reply = xai.chat(CHAT)

    assert reply.status_code == 200
    assert reply.body["choices"][0]["message"]["content"] == "echo: hello there"
    assert reply.limits.limit_requests == 6000
    assert reply.limits.remaining_requests == 99  # of the second's 100


# -- 429 -------------------------------------------------------------------------------------------


def test_injected_429_raises_rate_limited_with_the_retry_after_and_is_not_retried(sim, xai):
    sim.inject("/v1/videos/generations", 429)

    with pytest.raises(XaiRateLimited) as caught:
        xai.submit(VIDEO_GENERATION, VIDEO)

    assert caught.value.retry_after == 1.0
    assert sim.count("/v1/videos/generations") == 1, "a 429 must not be retried inside the client"


def test_requests_per_minute_limit_raises_rate_limited_with_parsed_limits(sim, xai):
    # Given an account allowing 2 requests per minute (one per 30 s), the one already used
    sim.update(requests_per_minute=2, rate_limit_headers=True, retry_after=True)  # the headers extension
    xai.chat(CHAT)

    # When a third request is made
    with pytest.raises(XaiRateLimited) as caught:
        xai.chat(CHAT)

    # Then the wait and the x-ratelimit-* headers are reported
    limited = caught.value
    assert 0 < limited.retry_after <= 30
    assert limited.limits.limit_requests == 2
    assert limited.limits.remaining_requests == 0
    assert 0 < limited.limits.reset_requests <= 30
    assert limited.limits.limit_tokens is None
    assert sim.count("/v1/chat/completions", status=429) == 1


def test_429_with_an_http_date_retry_after_gives_the_seconds_until_then(http_peer, make_client):
    http_peer.status = 429
    in_30_seconds = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    http_peer.headers = {"Retry-After": in_30_seconds}
    http_peer.body = b'{"error": "slow down"}'
    client = make_client(http_peer.url)

    with pytest.raises(XaiRateLimited) as caught:
        client.submit(VIDEO_GENERATION, VIDEO)

    assert 25 <= caught.value.retry_after <= 31


def test_429_without_retry_after_waits_for_the_longest_reset_header(http_peer, make_client):
    http_peer.status = 429
    http_peer.headers = {"x-ratelimit-reset-requests": "1.5s", "x-ratelimit-reset-tokens": "1m2s"}
    client = make_client(http_peer.url)

    with pytest.raises(XaiRateLimited) as caught:
        client.chat(CHAT)

    assert caught.value.retry_after == 62.0
    assert caught.value.limits.reset_requests == 1.5


def test_429_with_an_unparseable_retry_after_still_raises_rate_limited(http_peer, make_client):
    # An upstream (or a proxy in front of it) sending a Retry-After that is neither seconds nor a date
    # must still end as XaiRateLimited: callers only catch XaiError subclasses.
    http_peer.status = 429
    http_peer.headers = {"Retry-After": "soon"}
    client = make_client(http_peer.url)

    try:
        client.chat(CHAT)
    except XaiRateLimited as limited:
        assert limited.retry_after > 0
    except Exception as other:  # what escapes is the point of this test
        pytest.fail(
            "BUG xai._retry_after: a 429 with Retry-After 'soon' raised "
            f"{type(other).__name__}({other}) instead of XaiRateLimited "
            "(email.utils.parsedate_to_datetime raises ValueError on garbage, it does not return None)"
        )
    else:
        pytest.fail("a 429 must raise XaiRateLimited")


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "inf"},
        {"Retry-After": "nan"},
        {"Retry-After": "1e400"},
        {"x-ratelimit-reset-requests": "1e400"},
    ],
)
def test_429_with_an_endless_wait_gives_a_finite_one(http_peer, make_client, headers):
    # A wait of inf makes every computation after it overflow (math.ceil(inf) raises OverflowError).
    http_peer.status = 429
    http_peer.headers = headers
    http_peer.body = b'{"error": "slow down"}'
    client = make_client(http_peer.url)

    with pytest.raises(XaiRateLimited) as caught:
        client.chat(CHAT)

    assert 0 <= caught.value.retry_after < 3600


# -- 5xx, timeouts, broken connections ---------------------------------------------------------------


@pytest.mark.parametrize("fault", [500, 503, "reset"])
def test_one_server_fault_then_success_is_retried_and_succeeds_on_a_read(sim, xai, fault):
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)
    sim.inject(f"/v1/videos/{request_id}", fault)

    status = xai.status(VIDEO_GENERATION, request_id)

    assert status.state == "pending"
    assert sim.count(f"/v1/videos/{request_id}") == 2


@pytest.mark.parametrize("fault", [500, 503, "reset"])
def test_a_server_fault_after_a_submit_was_sent_is_not_retried(sim, xai, fault):
    sim.inject("/v1/videos/generations", fault)

    with pytest.raises(XaiSubmitUnknown):
        xai.submit(VIDEO_GENERATION, VIDEO)

    assert sim.count("/v1/videos/generations") == 1, "xAI may have it: a second submit could pay twice"


def test_persistent_503_raises_unavailable_after_max_attempts(sim, make_client):
    client = make_client(sim.base_url, max_attempts=4)
    sim.inject("/v1/videos/", 503, 503, 503, 503, 503, 503)

    with pytest.raises(XaiUnavailable) as caught:
        client.status(VIDEO_GENERATION, "some-id")

    assert sim.count("/v1/videos/", status=503) == 4
    assert "503" in str(caught.value)
    assert "4 attempts" in str(caught.value)


def test_a_hang_longer_than_the_timeout_raises_unavailable(make_client, api_key):
    config = SimulatorConfig(api_key=api_key, hang_seconds=2.0)
    with XaiSimulator(config) as hanging:
        hanging.inject("/v1/videos/", "hang", "hang")
        client = make_client(hanging.base_url, timeout=0.5, max_attempts=2)
        started = time.monotonic()

        with pytest.raises(XaiUnavailable) as caught:
            client.status(VIDEO_GENERATION, "some-id")

        elapsed = time.monotonic() - started
    assert "timed out" in str(caught.value)
    assert 1.0 <= elapsed < 1.9, f"two 0.5 s attempts should give up well before the 2 s hang ends: {elapsed}"


def test_connection_refused_raises_unavailable(make_client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{closed_port}/v1", max_attempts=2)

    with pytest.raises(XaiUnavailable, match="ConnectError"):
        client.submit(VIDEO_GENERATION, VIDEO)


def test_accepted_submit_without_a_request_id_raises_unavailable(http_peer, make_client):
    http_peer.body = b'{"status": "pending"}'
    client = make_client(http_peer.url)

    with pytest.raises(XaiUnavailable, match="no request id"):
        client.submit(VIDEO_GENERATION, VIDEO)


# -- 4xx -------------------------------------------------------------------------------------------


@pytest.mark.sends_invalid_requests
def test_400_raises_rejected_with_the_simulators_message_and_code(sim, xai):
    with pytest.raises(XaiRejected) as caught:
        xai.submit(VIDEO_GENERATION, {**VIDEO, "duration": 99})

    assert caught.value.status_code == 400
    assert caught.value.message == "duration: must be an integer from 1 to 15"
    assert caught.value.code == "invalid_argument"
    assert sim.count("/v1/videos/generations") == 1, "a 4xx must not be retried"


def test_rejection_without_a_code_gets_an_http_code(sim, xai):
    sim.inject("/v1/videos/generations", 422)

    with pytest.raises(XaiRejected) as caught:
        xai.submit(VIDEO_GENERATION, VIDEO)

    assert caught.value.code == "http_422"
    assert caught.value.message == "Injected fault (HTTP 422)"


def test_unknown_video_id_raises_rejected_404(sim, xai):
    with pytest.raises(XaiRejected) as caught:
        xai.status(VIDEO_GENERATION, "no-such-id")

    assert caught.value.status_code == 404
    assert caught.value.code == "not_found"


def _error_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error)) + repr(error) + repr(error.args)


def test_the_api_key_never_appears_in_exception_messages(sim, make_client, api_key):
    wrong_key = "sk-wrong-key-that-must-never-leak-42"
    leaks = []

    # 400: xAI refuses a wrong key as an invalid argument
    client = make_client(sim.base_url, api_key=wrong_key)
    with pytest.raises(XaiRejected) as rejected:
        client.submit(VIDEO_GENERATION, VIDEO)
    assert rejected.value.status_code == 400 and rejected.value.code == "invalid_argument"
    leaks.append(_error_text(rejected.value))

    # 429, 503 and timeouts with the right key
    client = make_client(sim.base_url, timeout=0.3, max_attempts=2)
    sim.inject("/v1/videos/generations", 429)
    with pytest.raises(XaiRateLimited) as limited:
        client.submit(VIDEO_GENERATION, VIDEO)
    leaks.append(_error_text(limited.value))
    sim.inject("/v1/videos/generations", 503)
    with pytest.raises(XaiSubmitUnknown) as unknown:
        client.submit(VIDEO_GENERATION, VIDEO)
    leaks.append(_error_text(unknown.value))
    sim.inject("/v1/videos/", 503, 503)
    with pytest.raises(XaiUnavailable) as unavailable:
        client.status(VIDEO_GENERATION, "some-id")
    leaks.append(_error_text(unavailable.value))

    for text in leaks:
        assert wrong_key not in text
        assert api_key not in text


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_calls_no_route_xai_lacks_unless_told_the_upstream_has_one(sim, xai):
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    assert xai.cancel(VIDEO_GENERATION, request_id) is False

    assert [c.path for c in sim.calls] == ["/v1/videos/generations"]
    assert xai.status(VIDEO_GENERATION, request_id).state == "pending"


@pytest.fixture
def cancelling(sim, make_client):
    """The simulator and a client both with the video cancel route (an extension)."""
    sim.update(video_cancel=True)
    return make_client(sim.base_url, video_cancel=True)


def test_cancel_of_a_pending_video_succeeds_and_the_video_ends_cancelled(sim, cancelling):
    xai = cancelling
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)

    assert xai.cancel(VIDEO_GENERATION, request_id) is True

    status = xai.status(VIDEO_GENERATION, request_id)
    assert status.state == "failed"
    assert status.error == {"code": "failed_precondition", "message": "Cancelled by request"}


def test_cancel_of_an_unknown_video_is_false(sim, cancelling):
    xai = cancelling
    assert xai.cancel(VIDEO_GENERATION, "no-such-id") is False
    assert sim.count("/v1/videos/no-such-id/cancel", status=404) == 1


def test_cancel_of_a_finished_video_is_false(sim, cancelling, settle):
    xai = cancelling
    request_id = xai.submit(VIDEO_GENERATION, VIDEO)
    settle(xai, VIDEO_GENERATION, request_id)

    assert xai.cancel(VIDEO_GENERATION, request_id) is False
    assert sim.count(f"/v1/videos/{request_id}/cancel", status=409) == 1


def test_cancel_of_a_deferred_chat_is_false_without_calling_xai(sim, xai):
    request_id = xai.submit(DEFERRED_CHAT, DEFERRED)

    assert xai.cancel(DEFERRED_CHAT, request_id) is False
    assert sim.count("/v1/chat/deferred-completion") == 0
    assert sim.count(f"/v1/videos/{request_id}") == 0


def test_base_url_with_a_trailing_slash_works(sim, api_key):
    client = XaiClient(sim.base_url + "/", api_key)

    assert sim.finish_at(client.submit(VIDEO_GENERATION, VIDEO)) is not None
    client.close()
