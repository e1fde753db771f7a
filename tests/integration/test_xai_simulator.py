"""The xAI simulator, exercised over real HTTP."""

import json
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import httpx
import pytest

from local.xai_simulator import SimulatorConfig, XaiSimulator

API_KEY = "sim-key"
CHAT_MODEL = "grok-4"
VIDEO_MODEL = "grok-imagine-video"
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., XaiSimulator]]:
    """Start a simulator with fast, deterministic defaults; any config field can be overridden."""
    started: list[XaiSimulator] = []

    def start(**fields) -> XaiSimulator:
        defaults = {
            "api_key": API_KEY,
            "video_duration_median": 0.3,
            "video_duration_sigma": 0.0,
            "deferred_chat_duration": 0.3,
            "random_seed": 7,
        }
        sim = XaiSimulator(SimulatorConfig(**(defaults | fields))).start()
        started.append(sim)
        return sim

    yield start
    problems = [problem for sim in started for problem in sim.violations(requests=False)]
    for sim in started:
        sim.stop()
    # Tests here send bad requests on purpose; the simulator's answers must keep to xAI's contract.
    assert not problems, "answers breaking xAI's contract:\n" + "\n".join(problems)


def client(sim: XaiSimulator, timeout: float = 5.0) -> httpx.Client:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.Client(base_url=sim.base_url, headers=auth, timeout=timeout)


def chat_body(text: str = "hello world", **extra) -> dict:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}], **extra}


def video_body(**extra) -> dict:
    return {"model": VIDEO_MODEL, "prompt": "a cat surfing", **extra}


def poll(http: httpx.Client, path: str, until: Callable[[httpx.Response], bool], deadline: float = 5.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        response = http.get(path)
        if until(response):
            return response
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach the expected state within {deadline}s")


@pytest.fixture
def callback_receiver() -> Iterator[tuple[str, queue.Queue]]:
    """A tiny HTTP server that queues (arrival time, JSON body) for every POST."""
    received: queue.Queue = queue.Queue()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((time.time(), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_chat_completion_has_the_openai_shape_and_counts_tokens(start_simulator):
    sim = start_simulator()
    body = {
        "model": CHAT_MODEL,
        "max_tokens": 3,
        "messages": [
            {"role": "system", "content": "be brief"},  # 8 chars
            {"role": "user", "content": "hello world"},  # 11 chars
        ],
    }

    reply = client(sim).post("/chat/completions", json=body)

    assert reply.status_code == 200
    completion = reply.json()
    assert completion["object"] == "chat.completion"
    assert completion["model"] == CHAT_MODEL
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "echo: hello world",
        "refusal": None,
    }
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["service_tier"] == "default"
    # ceil(19 / 4) + 3 per message; completion capped by max_tokens (17 // 4 + 1 = 5 > 3)
    usage = completion["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (11, 3, 14)
    assert usage["prompt_tokens_details"]["text_tokens"] == 11
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    # $0.20 / $0.50 per million prompt / completion tokens, 10^10 ticks per USD
    assert usage["cost_in_usd_ticks"] == 11 * 2_000 + 3 * 5_000
    assert sim.stats()["billed_usd_ticks"] == {"chat": 37_000, "video": 0, "total": 37_000}


def test_responses_api_answers_with_output_text(start_simulator):
    sim = start_simulator()

    reply = client(sim).post("/responses", json={"model": CHAT_MODEL, "input": "what is 2+2?"})

    assert reply.status_code == 200
    response = reply.json()
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "echo: what is 2+2?",
        "annotations": [],
    }
    assert response["usage"] == {"input_tokens": 6, "output_tokens": 5, "total_tokens": 11}


def test_deferred_chat_is_202_until_ready_then_200_exactly_once(start_simulator):
    sim = start_simulator(deferred_chat_duration=0.3)
    http = client(sim)

    submitted = http.post("/chat/completions", json=chat_body("slow one", deferred=True))
    request_id = submitted.json()["request_id"]
    pending = http.get(f"/chat/deferred-completion/{request_id}")
    ready = poll(http, f"/chat/deferred-completion/{request_id}", lambda r: r.status_code != 202)
    again = http.get(f"/chat/deferred-completion/{request_id}")

    assert pending.status_code == 202 and pending.content == b""
    assert ready.status_code == 200
    assert ready.json()["choices"][0]["message"]["content"] == "echo: slow one"
    assert ready.json()["id"] == request_id
    assert again.status_code == 404
    assert http.get("/chat/deferred-completion/no-such-id").status_code == 404
    assert sim.finish_at(request_id) == pytest.approx(sim.calls[0].time + 0.3, abs=0.05)


def not_pending(response: httpx.Response) -> bool:
    return response.status_code != 202


def test_video_goes_from_pending_to_done_and_downloads(start_simulator):
    sim = start_simulator(video_duration_median=0.4, video_pending_body_rate=1.0)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body(duration=5)).json()["request_id"]
    pending = http.get(f"/videos/{request_id}")
    done = poll(http, f"/videos/{request_id}", not_pending).json()
    media = httpx.get(done["video"]["url"])

    assert pending.status_code == 202
    assert pending.json()["status"] == "pending" and 0 <= pending.json()["progress"] <= 99
    assert done["status"] == "done" and done["progress"] == 100
    assert done["video"]["url"] == f"{sim.url}/media/{request_id}.mp4"
    assert done["video"]["duration"] == 5
    assert done["usage"] == {"cost_in_usd_ticks": 5 * 500_000_000}  # $0.05/s at 480p, 10^10 ticks per USD
    assert media.status_code == 200 and media.headers["content-type"] == "video/mp4"
    assert len(media.content) > 4000 and media.content[4:8] == b"ftyp"
    assert time.time() >= sim.finish_at(request_id)
    assert sim.count("/media") == 0  # downloads are not xAI calls
    assert http.get("/videos/unknown-id").status_code == 404


def test_a_pending_video_answers_202_with_or_without_a_body_at_random(start_simulator):
    sim = start_simulator(video_duration_median=30.0)
    http = client(sim)
    request_id = http.post("/videos/generations", json=video_body()).json()["request_id"]

    polls = [http.get(f"/videos/{request_id}") for _ in range(30)]

    assert {r.status_code for r in polls} == {202}
    empty = [r for r in polls if r.content == b""]
    with_body = [r for r in polls if r.content]
    assert empty and with_body, "both shapes occur"
    assert all(r.json() == {"status": "pending", "progress": r.json()["progress"]} for r in with_body)
    sim.update(video_pending_body_rate=0.0)
    assert all(http.get(f"/videos/{request_id}").content == b"" for _ in range(5))


def test_video_edit_requires_an_mp4_source_video(start_simulator):
    sim = start_simulator(video_requests_per_second=0)
    http = client(sim)

    missing = http.post("/videos/edits", json=video_body())
    not_mp4 = http.post("/videos/edits", json=video_body(video={"url": "https://example.com/in.mov"}))
    accepted = http.post("/videos/edits", json=video_body(video={"url": "https://example.com/in.mp4?sig=1"}))

    assert missing.status_code == 422 and "`video`" in missing.text
    assert missing.headers["content-type"].startswith("text/plain")
    assert not_mp4.status_code == 400 and ".mp4" in not_mp4.json()["error"]
    assert accepted.status_code == 200 and set(accepted.json()) == {"request_id"}


def test_video_requests_follow_the_spec_defaults_and_ranges(start_simulator):
    sim = start_simulator(video_requests_per_second=0, video_duration_median=0.05)
    http = client(sim)

    default = http.post("/videos/generations", json=video_body()).json()["request_id"]
    as_text = http.post("/videos/generations", json=video_body(duration="3")).json()["request_id"]
    too_long = http.post("/videos/generations", json=video_body(duration=16))
    hd_plain = http.post("/videos/generations", json=video_body(resolution="1080p"))
    hd = http.post("/videos/generations", json=video_body(model="grok-imagine-video-1.5", resolution="1080p"))
    odd_ratio = http.post("/videos/generations", json=video_body(aspect_ratio="5:4"))
    no_prompt = http.post("/videos/generations", json={"model": VIDEO_MODEL})
    from_image = http.post("/videos/generations", json={"image": {"url": "https://example.com/a.png"}})
    unknown_model = http.post("/videos/generations", json=video_body(model="grok-video"))
    done = poll(http, f"/videos/{default}", not_pending).json()

    assert done["video"]["duration"] == 8 and done["model"] == VIDEO_MODEL
    assert poll(http, f"/videos/{as_text}", not_pending).json()["video"]["duration"] == 3
    assert too_long.status_code == 400 and "duration" in too_long.json()["error"]
    assert hd_plain.status_code == 400 and "1080p" in hd_plain.json()["error"]
    assert hd.status_code == 200
    assert odd_ratio.status_code == 422 and "aspect_ratio" in odd_ratio.text
    assert no_prompt.status_code == 422 and "missing field `prompt`" in no_prompt.text
    assert from_image.status_code == 200  # image-to-video needs no prompt
    assert unknown_model.status_code == 404


def test_moderation_answers_the_poll_with_a_billed_400(start_simulator):
    sim = start_simulator(video_moderation_rate=1.0, video_duration_median=0.1)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body(duration=4)).json()["request_id"]
    moderated = poll(http, f"/videos/{request_id}", not_pending)

    assert moderated.status_code == 400
    assert moderated.json() == {
        "code": "Client specified an invalid argument",
        "error": "Generated video rejected by content moderation.",
        "usage": {"cost_in_usd_ticks": 4 * 500_000_000},
    }
    assert sim.stats()["billed_usd_ticks"]["video"] == 4 * 500_000_000
    assert httpx.get(f"{sim.url}/media/{request_id}.mp4").status_code == 404


def test_expired_video_answers_200_with_status_expired_and_is_not_billed(start_simulator):
    sim = start_simulator(video_expired_rate=1.0, video_duration_median=0.1)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body()).json()["request_id"]
    expired = poll(http, f"/videos/{request_id}", not_pending)

    assert expired.status_code == 200
    assert expired.json() == {"status": "expired", "model": VIDEO_MODEL}
    assert sim.stats()["billed_usd_ticks"]["video"] == 0


@pytest.mark.parametrize(
    ("model", "field", "value", "parameter"),
    [
        ("grok-3", "presence_penalty", 0.5, "presencePenalty"),
        ("grok-3-mini", "presence_penalty", 0.5, "presencePenalty"),
        ("grok-4", "presence_penalty", 0.5, "presencePenalty"),
        ("grok-4", "frequency_penalty", 0.5, "frequencyPenalty"),
        ("grok-3-mini", "stop", ["\n"], "stop"),
        ("grok-4", "reasoning_effort", "high", "reasoningEffort"),
    ],
)
def test_models_reject_the_parameters_xai_rejects(start_simulator, model, field, value, parameter):
    sim = start_simulator()

    reply = client(sim).post("/chat/completions", json=chat_body(model=model, **{field: value}))

    assert reply.status_code == 400
    assert reply.json() == {
        "code": "Client specified an invalid argument",
        "error": f"Model {model} does not support parameter {parameter}.",
    }


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        ("grok-3", "frequency_penalty", 0.5),
        ("grok-3", "stop", ["\n"]),
        ("grok-4-fast-non-reasoning", "stop", ["\n"]),
        ("grok-3-mini", "reasoning_effort", "low"),
    ],
)
def test_models_accept_the_parameters_they_support(start_simulator, model, field, value):
    sim = start_simulator()

    reply = client(sim).post("/chat/completions", json=chat_body(model=model, **{field: value}))

    assert reply.status_code == 200


def test_failure_rate_one_fails_every_video(start_simulator):
    sim = start_simulator(video_failure_rate=1.0, video_duration_median=0.1)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body()).json()["request_id"]
    failed = poll(http, f"/videos/{request_id}", not_pending)

    assert failed.status_code == 200
    assert failed.json() == {
        "status": "failed",  # progress and model are omitted when failed
        "error": {"code": "internal_error", "message": "Video generation failed (simulated)"},
    }
    assert httpx.get(f"{sim.url}/media/{request_id}.mp4").status_code == 404


def test_cancel_route_exists_only_as_an_extension(start_simulator):
    sim = start_simulator(video_duration_median=10.0)
    http = client(sim)
    request_id = http.post("/videos/generations", json=video_body()).json()["request_id"]

    cancel = http.post(f"/videos/{request_id}/cancel")

    assert cancel.status_code == 404 and cancel.json()["code"] == "Some requested entity was not found"
    assert http.get(f"/videos/{request_id}").json()["status"] == "pending"  # nothing was cancelled


def test_cancel_stops_a_pending_video_and_conflicts_once_finished(start_simulator):
    sim = start_simulator(video_duration_median=10.0, video_cancel=True, video_requests_per_second=0)
    http = client(sim)
    slow = http.post("/videos/generations", json=video_body()).json()["request_id"]

    cancelled = http.post(f"/videos/{slow}/cancel")
    status = http.get(f"/videos/{slow}").json()
    cancelled_again = http.post(f"/videos/{slow}/cancel")

    sim.update(video_duration_median=0.05)
    fast = http.post("/videos/generations", json=video_body()).json()["request_id"]
    poll(http, f"/videos/{fast}", not_pending)
    too_late = http.post(f"/videos/{fast}/cancel")

    assert cancelled.status_code == 200 and cancelled.json() == {"request_id": slow, "status": "cancelled"}
    assert status["status"] == "failed"
    assert status["error"] == {"code": "failed_precondition", "message": "Cancelled by request"}
    assert sim.finish_at(slow) < time.time()  # the cancel time, not the scheduled 10 s
    assert cancelled_again.status_code == 409
    assert too_late.status_code == 409
    assert http.post("/videos/unknown/cancel").status_code == 404


def test_seed_shapes_use_id_processing_completed_and_data_url(start_simulator):
    sim = start_simulator(seed_shapes=True, video_duration_median=0.3)
    http = client(sim)

    submitted = http.post("/videos/generations", json=video_body()).json()
    processing = http.get(f"/videos/{submitted['id']}").json()
    completed = poll(http, f"/videos/{submitted['id']}", lambda r: r.json()["status"] == "completed").json()
    deferred = http.post("/chat/completions", json=chat_body(deferred=True)).json()

    assert submitted["status"] == "pending" and abs(submitted["created"] - time.time()) < 5
    assert set(submitted) == {"id", "status", "created"}
    assert processing["status"] == "processing" and processing["id"] == submitted["id"]
    assert completed["data"] == [{"url": f"{sim.url}/media/{submitted['id']}.mp4"}]
    assert set(deferred) == {"id"}


RATE_LIMITED = "Some resource has been exhausted"


def test_requests_per_minute_are_enforced_per_second_with_a_bare_429(start_simulator):
    sim = start_simulator(requests_per_minute=30)  # one per 2 s
    http = client(sim)

    replies = [http.post("/chat/completions", json=chat_body()) for _ in range(3)]
    time.sleep(2.1)  # 2 s refill one request
    later = http.post("/chat/completions", json=chat_body())

    assert [r.status_code for r in replies] == [200, 429, 429]
    limited = replies[1]
    assert limited.json()["code"] == RATE_LIMITED and set(limited.json()) == {"code", "error"}
    assert "credits" not in limited.json()["error"]  # not the billing 429
    for reply in replies:
        assert "retry-after" not in reply.headers
        assert not [name for name in reply.headers if name.startswith("x-ratelimit")]
    assert later.status_code == 200
    assert sim.count("/v1/chat/completions", status=429) == 2


def test_a_minute_of_requests_cannot_go_in_one_second(start_simulator):
    sim = start_simulator(requests_per_minute=60)  # 1 per second, however long the account was idle
    http = client(sim)
    time.sleep(1.5)

    started = time.monotonic()
    statuses = [http.post("/chat/completions", json=chat_body()).status_code for _ in range(6)]
    elapsed = time.monotonic() - started

    assert statuses[:2] == [200, 429]  # a per-minute window would have let all 6 through
    assert statuses.count(200) <= 1 + int(elapsed)


def test_tokens_per_minute_are_enforced_per_second_charging_prompt_plus_max_tokens(start_simulator):
    sim = start_simulator(tokens_per_minute=600)  # 10 tokens per second
    http = client(sim)
    # ceil(2 / 4) + 3 = 4 prompt tokens + 40 = 44 charged: more than a second's budget, so it goes
    # alone into a full budget and leaves a debt of 34 tokens (3.4 s) the next requests wait out.
    big = http.post("/chat/completions", json=chat_body("hi", max_tokens=40))
    small = http.post("/chat/completions", json=chat_body("hi", max_tokens=1))  # 5 tokens
    huge = http.post("/chat/completions", json=chat_body("x" * 4_000))  # more than a minute's tokens

    assert big.status_code == 200
    assert small.status_code == 429
    assert huge.status_code == 429 and "tokens-per-minute" in huge.json()["error"]


def test_rate_limit_headers_and_retry_after_are_extensions(start_simulator):
    sim = start_simulator(requests_per_minute=120, rate_limit_headers=True, retry_after=True)
    http = client(sim)

    replies = [http.post("/chat/completions", json=chat_body()) for _ in range(12)]

    assert replies[0].status_code == 200
    assert replies[0].headers["x-ratelimit-remaining-requests"] == "1"  # of the second's 2
    assert replies[0].headers["x-ratelimit-limit-requests"] == "120"  # the configured per-minute limit
    limited = next(r for r in replies if r.status_code == 429)
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(limited.headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 1.0
    assert limited.headers["retry-after"] == "1"


def test_video_submits_are_limited_to_one_per_second_by_default_but_polls_are_not(start_simulator):
    sim = start_simulator(video_duration_median=10.0)
    http = client(sim)

    first = http.post("/videos/generations", json=video_body())
    second = http.post("/videos/generations", json=video_body())
    polls = [http.get(f"/videos/{first.json()['request_id']}").status_code for _ in range(5)]
    time.sleep(1.05)
    third = http.post("/videos/edits", json=video_body(video={"url": "https://example.com/a.mp4"}))

    assert SimulatorConfig().video_requests_per_second == 1
    assert (first.status_code, second.status_code, third.status_code) == (200, 429, 200)
    assert "retry-after" not in second.headers
    assert second.json()["code"] == RATE_LIMITED
    assert all(status < 300 for status in polls)
    assert sim.stats()["jobs"] == {"video:pending": 2}


BILLING = "has either used all available credits or reached its monthly spending limit"


@pytest.mark.parametrize("status", [429, 403])
def test_credits_exhausted_mode_answers_every_call_with_the_billing_error(start_simulator, status):
    sim = start_simulator(deferred_chat_duration=0.05)
    http = client(sim)
    video = http.post("/videos/generations", json=video_body()).json()["request_id"]
    deferred = http.post("/chat/completions", json=chat_body(deferred=True)).json()["request_id"]
    time.sleep(0.1)

    switched = httpx.post(
        f"{sim.url}/sim/config", json={"credits_exhausted": True, "credits_exhausted_status": status}
    )
    blocked = [
        http.post("/chat/completions", json=chat_body()),
        http.post("/videos/generations", json=video_body()),
        http.get(f"/videos/{video}"),
        http.get(f"/chat/deferred-completion/{deferred}"),
        http.post("/responses", json={"model": CHAT_MODEL, "input": "hi"}),
    ]
    sim.update(credits_exhausted=False)
    after = [
        http.post("/chat/completions", json=chat_body()),
        http.get(f"/chat/deferred-completion/{deferred}"),
    ]

    assert switched.status_code == 200 and switched.json()["credits_exhausted"] is True
    assert [r.status_code for r in blocked] == [status] * 5
    expected_code = (
        RATE_LIMITED
        if status == 429
        else "The caller does not have permission to execute the specified operation"
    )
    for reply in blocked:
        assert reply.json()["code"] == expected_code and BILLING in reply.json()["error"]
        assert "retry-after" not in reply.headers
    # Nothing was consumed while blocked: the deferred result is still handed out, once.
    assert [r.status_code for r in after] == [200, 200]
    assert httpx.post(f"{sim.url}/sim/config", json={"credits_exhausted_status": 402}).status_code == 400


def test_injected_outcomes_are_consumed_in_order_for_matching_paths(start_simulator):
    sim = start_simulator(video_duration_median=30.0)
    http = client(sim)
    sim.inject("/v1/chat/", 503, 429, 500)

    first = http.post("/chat/completions", json=chat_body())
    unrelated = http.post("/videos/generations", json=video_body())
    rest = [http.post("/chat/completions", json=chat_body()) for _ in range(3)]
    httpx.post(f"{sim.url}/sim/inject", json={"path_prefix": "/v1/videos/", "outcomes": [500]})
    video_fault = http.post("/videos/generations", json=video_body())

    assert first.status_code == 503 and first.json()["code"] == "The service is currently unavailable"
    assert unrelated.status_code == 200
    assert [r.status_code for r in rest] == [429, 500, 200]
    assert rest[0].json()["code"] == RATE_LIMITED and "retry-after" not in rest[0].headers
    assert video_fault.status_code == 500
    assert sim.stats()["jobs"] == {"video:pending": 1}  # a faulted submit creates no job


def test_random_faults_follow_the_configured_rates(start_simulator):
    sim = start_simulator(error_503_rate=1.0)
    http = client(sim)

    statuses = [http.post("/videos/generations", json=video_body()).status_code for _ in range(5)]
    sim.update(error_503_rate=0.0)

    assert statuses == [503] * 5
    assert http.post("/videos/generations", json=video_body()).status_code == 200
    assert sim.count("/v1/videos/generations", status=503) == 5


def test_hang_answers_504_after_hang_seconds_and_stop_interrupts_it(start_simulator):
    sim = start_simulator(hang_seconds=0.3)
    sim.inject("/v1/chat/completions", "hang")

    started = time.monotonic()
    hung = client(sim).post("/chat/completions", json=chat_body())
    waited = time.monotonic() - started

    assert hung.status_code == 504 and 0.3 <= waited < 2
    assert sim.count(status=504) == 1

    sim.update(hang_seconds=30.0, hang_rate=1.0)
    with pytest.raises(httpx.ReadTimeout):
        client(sim, timeout=0.3).post("/chat/completions", json=chat_body())
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2


def test_injected_reset_closes_the_connection(start_simulator):
    sim = start_simulator()
    sim.inject("/v1/videos/", "reset")

    with pytest.raises(httpx.TransportError):
        client(sim).get("/videos/anything")

    assert sim.calls[0].status == 0


def test_missing_api_key_is_401_and_a_wrong_one_400_as_xai_answers(start_simulator):
    sim = start_simulator()

    anonymous = httpx.post(f"{sim.base_url}/chat/completions", json=chat_body())
    wrong = httpx.post(
        f"{sim.base_url}/chat/completions",
        json=chat_body(),
        headers={"Authorization": "Bearer xai-wrong-key"},
    )

    assert anonymous.status_code == 401
    assert wrong.status_code == 400
    assert wrong.json() == {
        "code": "Client specified an invalid argument",
        "error": "Incorrect API key provided: xa***",
    }
    assert sim.count(status=401) == 1 and sim.count(status=400) == 1


def test_callbacks_are_posted_when_jobs_finish(start_simulator, callback_receiver):
    url, received = callback_receiver
    sim = start_simulator(
        callbacks=True, video_duration_median=0.3, deferred_chat_duration=0.2, video_requests_per_second=0
    )
    http = client(sim)

    video = http.post("/videos/generations", json=video_body(callback_url=url)).json()["request_id"]
    chat = http.post("/chat/completions", json=chat_body(deferred=True, callback_url=url)).json()
    chat = chat["request_id"]
    sim.update(video_failure_rate=1.0)
    failing = http.post("/videos/generations", json=video_body(callback_url=url)).json()["request_id"]
    no_callback = http.post("/videos/generations", json=video_body()).json()["request_id"]
    deliveries = [received.get(timeout=3) for _ in range(3)]

    by_id = {body["request_id"]: (at, body) for at, body in deliveries}
    assert set(by_id) == {video, chat, failing}
    assert by_id[video][1] == {"request_id": video, "status": "done"}
    assert by_id[chat][1] == {"request_id": chat, "status": "done"}
    assert by_id[failing][1] == {"request_id": failing, "status": "failed"}
    for request_id, (at, _) in by_id.items():
        assert 0 <= at - sim.finish_at(request_id) < 0.5
    time.sleep(0.2)
    assert received.empty() and sim.finish_at(no_callback) is not None


def test_call_log_records_every_api_call_but_not_control_calls(start_simulator):
    sim = start_simulator()
    http = client(sim)

    request_id = http.post(
        "/videos/generations", json=video_body(), headers={"X-Xjobs-Tenant": "acme"}
    ).json()["request_id"]
    http.get(f"/videos/{request_id}")
    http.post("/chat/completions", json=chat_body())
    remote_calls = httpx.get(f"{sim.url}/sim/calls").json()
    stats = httpx.get(f"{sim.url}/sim/stats").json()

    assert [(c.method, c.path, c.status) for c in sim.calls] == [
        ("POST", "/v1/videos/generations", 200),
        ("GET", f"/v1/videos/{request_id}", 202),
        ("POST", "/v1/chat/completions", 200),
    ]
    first = sim.calls[0]
    assert first.request_id == request_id and first.tenant_header == "acme"
    assert first.body == video_body()
    assert sim.count("/v1/videos") == 2 and sim.count(method="post") == 2
    assert [c["path"] for c in remote_calls] == [c.path for c in sim.calls]
    assert stats["total"] == 3 and stats["rate_limited"] == 0
    assert stats["by_path"]["/v1/videos/{id}"] == {"202": 1}

    assert httpx.post(f"{sim.url}/sim/reset").status_code == 200
    assert sim.calls == [] and http.get(f"/videos/{request_id}").status_code == 404


def test_config_can_be_changed_over_http(start_simulator):
    sim = start_simulator()
    http = client(sim)

    changed = httpx.post(f"{sim.url}/sim/config", json={"requests_per_minute": 1})
    unknown = httpx.post(f"{sim.url}/sim/config", json={"no_such_field": 1})
    statuses = [http.post("/chat/completions", json=chat_body()).status_code for _ in range(2)]

    assert changed.status_code == 200 and changed.json()["requests_per_minute"] == 1
    assert unknown.status_code == 400 and "no_such_field" in unknown.json()["error"]
    assert statuses == [200, 429]


@pytest.mark.parametrize(
    ("path", "body", "status", "names"),
    [
        ("/chat/completions", {"model": CHAT_MODEL}, 422, "missing field `messages`"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 422, "missing field `model`"),
        ("/chat/completions", {"model": CHAT_MODEL, "messages": [{"content": "x"}]}, 422, "`role`"),
        ("/chat/completions", chat_body(max_tokens="many"), 422, "max_tokens"),
        ("/chat/completions", chat_body(max_tokens=0), 400, "max_tokens"),
        ("/chat/completions", chat_body() | {"model": "gpt-4o"}, 404, "The model gpt-4o does not exist"),
        ("/chat/completions", chat_body(model="grok-imagine-video"), 404, "grok-imagine-video"),
        ("/videos/generations", video_body(duration=20), 400, "duration"),
        ("/videos/generations", {"model": VIDEO_MODEL, "prompt": ""}, 400, "prompt"),
        ("/responses", {"model": CHAT_MODEL, "input": []}, 400, "input"),
    ],
)
def test_bad_bodies_are_rejected_naming_the_field(start_simulator, path, body, status, names):
    sim = start_simulator()

    reply = client(sim).post(path, json=body)

    assert reply.status_code == status
    assert names in reply.text  # a 422 is plain text, other errors xAI's flat JSON
    assert sim.stats()["jobs"] == {}


def test_invalid_json_is_400(start_simulator):
    sim = start_simulator()

    reply = client(sim).post(
        "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert reply.status_code == 400 and reply.headers["content-type"].startswith("text/plain")
    assert "JSON" in reply.text


def test_a_body_without_the_json_content_type_is_415(start_simulator):
    sim = start_simulator()

    reply = client(sim).post("/chat/completions", content=json.dumps(chat_body()).encode())

    assert reply.status_code == 415 and "Content-Type: application/json" in reply.text


def test_command_line_serves_until_interrupted():
    process = subprocess.Popen(
        [sys.executable, "-m", "local.xai_simulator", "--port", "0", "--rpm", "1"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().strip()
        statuses = [
            httpx.post(f"{base_url}/chat/completions", json=chat_body(), timeout=5).status_code
            for _ in range(2)
        ]
    finally:
        process.terminate()
        process.wait(timeout=5)

    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    assert statuses == [200, 429]
