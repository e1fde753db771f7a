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
    for sim in started:
        sim.stop()


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
    # ceil(19 / 4) + 3 per message; completion capped by max_tokens (17 // 4 + 1 = 5 > 3)
    assert completion["usage"] == {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


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


def test_video_goes_from_pending_to_done_and_downloads(start_simulator):
    sim = start_simulator(video_duration_median=0.4)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body(duration=5)).json()["request_id"]
    pending = http.get(f"/videos/{request_id}").json()
    done = poll(http, f"/videos/{request_id}", lambda r: r.json()["status"] != "pending").json()
    media = httpx.get(done["video"]["url"])

    assert pending["status"] == "pending" and 0 <= pending["progress"] <= 99
    assert done["status"] == "done" and done["progress"] == 100
    assert done["video"]["url"] == f"{sim.url}/media/{request_id}.mp4"
    assert done["video"]["duration"] == 5
    assert done["usage"] == {"cost_in_usd_ticks": 5 * 500_000_000}  # $0.05/s at 480p, 10^10 ticks per USD
    assert media.status_code == 200 and media.headers["content-type"] == "video/mp4"
    assert len(media.content) > 4000 and media.content[4:8] == b"ftyp"
    assert time.time() >= sim.finish_at(request_id)
    assert sim.count("/media") == 0  # downloads are not xAI calls
    assert http.get("/videos/unknown-id").status_code == 404


def test_video_edit_requires_a_source_video(start_simulator):
    sim = start_simulator()
    http = client(sim)

    missing = http.post("/videos/edits", json=video_body())
    accepted = http.post("/videos/edits", json=video_body(video={"url": "https://example.com/in.mp4"}))

    assert missing.status_code == 400 and "video.url" in missing.json()["error"]
    assert accepted.status_code == 200 and "request_id" in accepted.json()


def test_failure_rate_one_fails_every_video(start_simulator):
    sim = start_simulator(video_failure_rate=1.0, video_duration_median=0.1)
    http = client(sim)

    request_id = http.post("/videos/generations", json=video_body()).json()["request_id"]
    failed = poll(http, f"/videos/{request_id}", lambda r: r.json()["status"] != "pending")

    assert failed.status_code == 200
    assert failed.json()["status"] == "failed"
    assert failed.json()["error"]["code"] == "internal_error"
    assert failed.json()["progress"] == 0
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
    poll(http, f"/videos/{fast}", lambda r: r.json()["status"] == "done")
    too_late = http.post(f"/videos/{fast}/cancel")

    assert cancelled.status_code == 200 and cancelled.json() == {"request_id": slow, "status": "cancelled"}
    assert status["status"] == "failed"
    assert status["error"] == {"code": "cancelled", "message": "cancelled by request"}
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
    sim = start_simulator(requests_per_minute=120)  # 2 per second
    http = client(sim)

    replies = [http.post("/chat/completions", json=chat_body()) for _ in range(3)]
    time.sleep(0.55)  # half a second refills one request
    later = http.post("/chat/completions", json=chat_body())

    assert [r.status_code for r in replies] == [200, 200, 429]
    limited = replies[2]
    assert limited.json()["code"] == RATE_LIMITED and set(limited.json()) == {"code", "error"}
    assert "credits" not in limited.json()["error"]  # not the billing 429
    for reply in replies:
        assert "retry-after" not in reply.headers
        assert not [name for name in reply.headers if name.startswith("x-ratelimit")]
    assert later.status_code == 200
    assert sim.count("/v1/chat/completions", status=429) == 1


def test_a_minute_of_requests_cannot_go_in_one_second(start_simulator):
    sim = start_simulator(requests_per_minute=600)  # 10 per second, however long the account was idle
    http = client(sim)
    time.sleep(0.3)

    statuses = [http.post("/chat/completions", json=chat_body()).status_code for _ in range(15)]

    assert 10 <= statuses.count(200) <= 11 and statuses[:10] == [200] * 10
    assert statuses.count(429) >= 4


def test_tokens_per_minute_are_enforced_per_second_charging_prompt_plus_max_tokens(start_simulator):
    sim = start_simulator(tokens_per_minute=6000)  # 100 tokens per second
    http = client(sim)
    body = chat_body("hi", max_tokens=40)  # ceil(2 / 4) + 3 = 4 prompt tokens, 44 charged

    replies = [http.post("/chat/completions", json=body) for _ in range(3)]
    small = http.post("/chat/completions", json=chat_body("hi", max_tokens=5))  # 9 of the 12 left
    huge = http.post("/chat/completions", json=chat_body("x" * 40_000))  # more than a minute's tokens

    assert [r.status_code for r in replies] == [200, 200, 429]
    assert small.status_code == 200
    assert huge.status_code == 429 and "tokens-per-minute" in huge.json()["error"]


def test_rate_limit_headers_and_retry_after_are_extensions(start_simulator):
    sim = start_simulator(requests_per_minute=120, rate_limit_headers=True, retry_after=True)
    http = client(sim)

    replies = [http.post("/chat/completions", json=chat_body()) for _ in range(3)]

    assert [r.status_code for r in replies] == [200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in replies] == ["1", "0", "0"]
    assert replies[2].headers["x-ratelimit-limit-requests"] == "120"
    assert 0.4 < float(replies[2].headers["x-ratelimit-reset-requests"].removesuffix("s")) <= 1.0
    assert replies[2].headers["retry-after"] == "1"


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
    sim = start_simulator()
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
        ("GET", f"/v1/videos/{request_id}", 200),
        ("POST", "/v1/chat/completions", 200),
    ]
    first = sim.calls[0]
    assert first.request_id == request_id and first.tenant_header == "acme"
    assert first.body == video_body()
    assert sim.count("/v1/videos") == 2 and sim.count(method="post") == 2
    assert [c["path"] for c in remote_calls] == [c.path for c in sim.calls]
    assert stats["total"] == 3 and stats["rate_limited"] == 0
    assert stats["by_path"]["/v1/videos/{id}"] == {"200": 1}

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
        ("/chat/completions", {"model": CHAT_MODEL}, 400, "messages"),
        ("/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ("/chat/completions", {"model": CHAT_MODEL, "messages": [{"content": "x"}]}, 400, "messages[0].role"),
        ("/chat/completions", chat_body(max_tokens=0), 400, "max_tokens"),
        ("/chat/completions", chat_body() | {"model": "gpt-4o"}, 404, "The model gpt-4o does not exist"),
        ("/videos/generations", video_body(duration=20), 400, "duration"),
        ("/videos/generations", {"model": VIDEO_MODEL, "prompt": ""}, 400, "prompt"),
        ("/responses", {"model": CHAT_MODEL, "input": []}, 400, "input"),
    ],
)
def test_bad_bodies_are_rejected_naming_the_field(start_simulator, path, body, status, names):
    sim = start_simulator()

    reply = client(sim).post(path, json=body)

    assert reply.status_code == status
    assert names in reply.json()["error"]
    assert sim.stats()["jobs"] == {}


def test_invalid_json_is_400(start_simulator):
    sim = start_simulator()

    reply = client(sim).post(
        "/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}
    )

    assert reply.status_code == 400 and reply.headers["content-type"].startswith("text/plain")
    assert "JSON" in reply.text


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
