"""xAI's deferred chat, durably: code written for xAI works by changing the base URL, and the result
can be read again."""

import time

import httpx

CHAT = {"model": "grok-4", "deferred": True, "messages": [{"role": "user", "content": "Say hi"}]}


def _poll(api: httpx.Client, request_id: str, timeout: float = 30) -> httpx.Response:
    deadline = time.time() + timeout
    while True:
        reply = api.get(f"/v1/chat/deferred-completion/{request_id}")
        if reply.status_code != 202 or time.time() > deadline:
            return reply
        assert reply.content == b""  # xAI's 202 has no body
        time.sleep(0.2)


def test_deferred_chat_as_xai_answers_it_and_again(api, sim):
    sim.update(deferred_chat_duration=1.0)
    created = api.post("/v1/chat/completions", json=CHAT)
    assert created.status_code == 202
    request_id = created.json()["request_id"]
    assert request_id == created.json()["id"]
    assert api.get(f"/v1/chat/deferred-completion/{request_id}").status_code == 202
    done = _poll(api, request_id)
    assert done.status_code == 200, done.text
    completion = done.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["role"] == "assistant"
    again = api.get(f"/v1/chat/deferred-completion/{request_id}")
    assert again.status_code == 200 and again.json() == completion  # xAI hands a result out once; we keep it


def test_a_cancelled_deferred_chat_is_gone_with_its_reason(api, sim):
    sim.update(deferred_chat_duration=30.0)
    request_id = api.post("/v1/chat/completions", json=CHAT).json()["request_id"]
    assert api.post(f"/v1/jobs/{request_id}/cancel").status_code == 200
    reply = api.get(f"/v1/chat/deferred-completion/{request_id}")
    assert reply.status_code == 410
    assert "cancelled" in reply.json()["error"]["message"]


def test_a_video_job_or_an_unknown_id_is_not_a_deferred_completion(api):
    video = api.post("/v1/videos/generations", json={"prompt": "a kite"}).json()["id"]
    for request_id in (video, "job_01UNKNOWN"):
        reply = api.get(f"/v1/chat/deferred-completion/{request_id}")
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"
