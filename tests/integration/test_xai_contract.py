"""xAI's contract (local/xai_contract): the schemas, and the simulator kept to them over real HTTP."""

import time

import httpx
import pytest
from jsonschema import Draft202012Validator

from local import xai_contract
from local.xai_simulator import EXTENSIONS, SimulatorConfig, XaiSimulator

API_KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}]}
VIDEO = {"model": "grok-imagine-video", "prompt": "a heron at dawn"}


@pytest.fixture
def sim():
    config = SimulatorConfig(
        api_key=API_KEY,
        video_duration_median=0.1,
        video_duration_sigma=0.0,
        deferred_chat_duration=0.1,
        video_requests_per_second=0,
        random_seed=3,
    )
    with XaiSimulator(config) as simulator:
        yield simulator


@pytest.fixture
def http(sim):
    with httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5) as client:
        yield client


def settle(http: httpx.Client, path: str) -> httpx.Response:
    for _ in range(100):
        reply = http.get(path)
        if reply.status_code != 202:
            return reply
        time.sleep(0.03)
    raise AssertionError(f"{path} still pending")


@pytest.mark.parametrize("name", xai_contract.SCHEMA_NAMES)
def test_every_schema_is_a_valid_json_schema(name):
    Draft202012Validator.check_schema(xai_contract.validator(name).schema)


@pytest.mark.parametrize(
    ("name", "document", "valid"),
    [
        ("chat_request", {**CHAT, "deferred": True, "max_completion_tokens": 10, "stop": ["\n"]}, True),
        ("chat_request", {**CHAT, "callback_url": "http://x"}, False),  # not a field xAI has
        ("chat_request", {**CHAT, "stop": "\n"}, False),  # xAI's stop is a list
        ("chat_request", {"model": "grok-4", "messages": []}, False),
        ("chat_request", {"model": "grok-4", "messages": [{"role": "user"}]}, False),
        ("chat_request", {"model": "grok-4", "messages": [{"role": "assistant", "content": None}]}, True),
        (
            "video_generation_request",
            {**VIDEO, "duration": 15, "resolution": "720p", "aspect_ratio": "9:16"},
            True,
        ),
        ("video_generation_request", {**VIDEO, "duration": 16}, False),
        ("video_generation_request", {**VIDEO, "aspect_ratio": "5:4"}, False),
        ("video_generation_request", {"image": {"url": "https://x.test/a.png"}}, True),  # image alone
        ("video_generation_request", {"model": "grok-imagine-video"}, False),  # neither prompt nor image
        ("video_edit_request", {**VIDEO, "video": {"url": "https://x.test/in.mp4?sig=1"}}, True),
        ("video_edit_request", {**VIDEO, "video": {"url": "https://x.test/in.mov"}}, False),
        ("video_edit_request", VIDEO, False),
        ("deferred_submit_response", {"request_id": "abc"}, True),
        ("deferred_submit_response", {"id": "abc", "status": "pending"}, False),  # the seed documents' shape
        ("video_status_response", {"status": "pending", "progress": 3}, True),
        ("video_status_response", {"status": "processing", "progress": 3}, False),
        (
            "video_status_response",
            {
                "status": "done",
                "video": {"url": "https://v.test/a.mp4", "duration": 8, "respect_moderation": True},
                "model": "grok-imagine-video",
                "usage": {"cost_in_usd_ticks": 4_000_000_000},
                "progress": 100,
            },
            True,
        ),
        ("video_status_response", {"status": "done", "data": [{"url": "https://v.test/a.mp4"}]}, False),
        (
            "video_status_response",
            {"status": "failed", "error": {"code": "internal_error", "message": "x"}},
            True,
        ),
        (
            "video_status_response",
            {"status": "failed", "error": {"code": "cancelled", "message": "x"}},
            False,
        ),
        ("video_status_response", {"status": "expired"}, True),
        ("error", {"code": "Some resource has been exhausted", "error": "slow down"}, True),
        ("error", {"error": {"message": "slow down", "type": "rate_limit_error"}}, False),  # OpenAI's nesting
    ],
)
def test_the_schemas_accept_xais_shapes_and_refuse_others(name, document, valid):
    assert (xai_contract.problems(name, document) == []) is valid


def test_every_answer_of_the_default_simulator_keeps_to_the_contract(sim, http):
    # Chat, deferred chat (pending, ready once, then gone), every way a video ends, and errors.
    http.post("/chat/completions", json=CHAT)
    deferred = http.post("/chat/completions", json={**CHAT, "deferred": True}).json()["request_id"]
    http.get(f"/chat/deferred-completion/{deferred}")
    settle(http, f"/chat/deferred-completion/{deferred}")
    http.get(f"/chat/deferred-completion/{deferred}")
    statuses = {}
    for outcome in ("video_failure_rate", "video_moderation_rate", "video_expired_rate", None):
        sim.update(**{"video_failure_rate": 0.0, "video_moderation_rate": 0.0, "video_expired_rate": 0.0})
        if outcome:
            sim.update(**{outcome: 1.0})
        request_id = http.post("/videos/generations", json=VIDEO).json()["request_id"]
        for _ in range(4):
            http.get(f"/videos/{request_id}")  # pending: 202 with and without a body
        statuses[outcome] = settle(http, f"/videos/{request_id}").status_code
    http.post("/videos/edits", json={**VIDEO, "video": {"url": "https://x.test/in.mp4"}})
    http.post("/chat/completions", json={**CHAT, "model": "grok-3", "presence_penalty": 1.0})  # 400
    http.post("/chat/completions", json={**CHAT, "model": "gpt-4o"})  # 404
    httpx.post(f"{sim.base_url}/chat/completions", json=CHAT)  # 401
    http.post("/videos/x/cancel", json={})  # no such route at xAI: 404
    sim.update(requests_per_minute=1)
    http.post("/chat/completions", json=CHAT)
    http.post("/chat/completions", json=CHAT)  # 429
    sim.update(credits_exhausted=True)
    http.post("/chat/completions", json=CHAT)  # the billing 429

    assert statuses == {
        "video_failure_rate": 200,
        "video_moderation_rate": 400,
        "video_expired_rate": 200,
        None: 200,
    }
    assert {c.status for c in sim.calls} >= {200, 202, 400, 401, 404, 429}
    assert sim.violations() == []


def test_requests_breaking_the_contract_are_logged_with_what_is_wrong(sim, http):
    http.post("/chat/completions", json={**CHAT, "webhook_url": "https://hook.test"})
    http.post("/videos/generations", json={**VIDEO, "duration": "long"})
    http.post("/chat/completions", json=CHAT)

    logged = [(c.path, c.request_violations) for c in sim.calls]
    assert "webhook_url" in logged[0][1][0] and logged[0][0] == "/v1/chat/completions"
    assert "duration" in logged[1][1][0]
    assert logged[2][1] == ()
    assert len(sim.violations(answers=False)) == 2 and sim.violations(requests=False) == []


def test_callback_url_is_part_of_a_request_only_with_the_callbacks_extension(sim, http):
    body = {**VIDEO, "callback_url": "http://127.0.0.1:9/hook"}
    http.post("/videos/generations", json=body)
    sim.update(callbacks=True)
    http.post("/videos/generations", json=body)

    assert [bool(c.request_violations) for c in sim.calls] == [True, False]


@pytest.mark.parametrize(
    ("extension", "method", "path", "status", "headers"),
    [
        ("retry_after", "POST", "/v1/chat/completions", 429, {"Retry-After": "1"}),
        ("rate_limit_headers", "POST", "/v1/chat/completions", 429, {"x-ratelimit-limit-requests": "60"}),
        ("video_cancel", "POST", "/v1/videos/abc/cancel", 200, {}),
    ],
)
def test_a_header_or_route_xai_lacks_is_a_violation_unless_its_extension_is_on(
    extension, method, path, status, headers
):
    def check(extensions: frozenset[str]) -> list[str]:
        payload = b'{"code": "Some resource has been exhausted", "error": "x"}' if status == 429 else b""
        return xai_contract.response_problems(
            method, path, None, status, headers, "application/json", payload, extensions
        )

    assert check(frozenset()) != []
    assert check(frozenset({extension})) == []
    assert extension in EXTENSIONS and getattr(SimulatorConfig(), extension) is False


def test_the_simulator_logs_an_extension_it_serves_as_kept_only_while_the_option_is_on(sim, http):
    sim.update(retry_after=True, rate_limit_headers=True, requests_per_minute=1, video_cancel=True)
    http.post("/chat/completions", json=CHAT)
    limited = http.post("/chat/completions", json=CHAT)
    request_id = http.post("/videos/generations", json=VIDEO).json()["request_id"]
    cancelled = http.post(f"/videos/{request_id}/cancel", json={})

    assert limited.status_code == 429 and "retry-after" in limited.headers
    assert cancelled.status_code == 200
    assert sim.violations() == []
    # The same answers, judged as if the options were off, break the contract.
    off = xai_contract.response_problems(
        "POST",
        "/v1/chat/completions",
        CHAT,
        429,
        dict(limited.headers),
        "application/json",
        limited.content,
        frozenset(),
    )
    assert any("retry-after" in problem.lower() for problem in off)
    assert any("x-ratelimit" in problem for problem in off)
