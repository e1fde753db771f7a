"""A wrong chat limit and an account out of credits, end to end: every line and job is answered, none
is failed for it, and the pause says why while it lasts."""

import time

import pytest

from tests.e2e.helpers import TERMINAL, wait_for_status
from tests.e2e_batches.helpers import assert_each_once, jsonl, read_lines, request_line

CHAT = "/v1/chat/completions"


def wait_until(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


def account_events(inbox) -> list[str]:
    inbox.drain()
    return [m["attributes"]["event"] for m in inbox.messages if m["attributes"].get("kind") == "xai.account"]


def test_a_batch_under_a_limit_three_times_lower_than_configured_answers_every_line(batches, sim):
    # GIVEN an account that allows 600 requests a minute (10 a second) where 1,800 are configured,
    # and 429s that say nothing about the limit (as xAI's do)
    sim.update(requests_per_minute=600)
    custom_ids = [f"q-{i}" for i in range(300)]

    batch, output, errors = batches.run([request_line(c) for c in custom_ids], timeout=240)

    # THEN every line is answered — none used up its 3 receives waiting — and the 429s stay few
    assert batch["status"] == "completed"
    assert errors == []
    assert_each_once(custom_ids, output, [])
    stats = sim.stats()
    assert stats["rate_limited"] <= 0.25 * len(custom_ids), stats


@pytest.mark.parametrize("status", [429, 403])
def test_credits_running_out_mid_batch_pause_it_and_it_completes_when_they_return(
    batches, sim, api, inbox, status
):
    sim.update(requests_per_minute=1200)
    custom_ids = [f"c-{i}" for i in range(200)]
    batch_id = batches.create(jsonl([request_line(c) for c in custom_ids]))["id"]

    # WHEN the account runs out of credits a quarter of the way through
    wait_until(lambda: sim.count(CHAT, status=200) >= 50, 60, "50 answered")
    sim.update(credits_exhausted=True, credits_exhausted_status=status)

    # THEN the batch pauses and says why, and the block is announced once
    paused = wait_until(
        lambda: (b := api.get(f"/v1/batches/{batch_id}").json()).get("paused_reason") and b, 30, "paused"
    )
    assert paused["status"] in ("validating", "in_progress")
    assert paused["paused_reason"] == "xai_account_blocked"
    assert "credits" in paused["paused_detail"]["message"]
    time.sleep(4)  # blocked for a while: the workers probe, nothing fails
    assert api.get(f"/v1/batches/{batch_id}").json()["request_counts"]["failed"] == 0
    assert account_events(inbox) == ["account.blocked"]

    # WHEN credits return, the batch resumes by itself and completes with every line answered
    sim.update(credits_exhausted=False)
    batch = batches.wait(batch_id, timeout=240)
    output, errors = read_lines(batch.get("output_file_url")), read_lines(batch.get("error_file_url"))
    assert batch["status"] == "completed"
    assert errors == []
    assert_each_once(custom_ids, output, [])
    assert "paused_reason" not in batch
    assert account_events(inbox) == ["account.blocked", "account.resumed"]


@pytest.mark.parametrize("status", [429, 403])
def test_credits_running_out_pause_deferred_jobs_that_complete_when_they_return(api, sim, inbox, status):
    body = {"model": "grok-4", "deferred": True, "messages": [{"role": "user", "content": "hi"}]}
    # GIVEN a deferred chat job xAI is working on
    running = api.post("/v1/chat/completions", json=body).json()
    started = wait_until(
        lambda: (j := api.get(f"/v1/jobs/{running['id']}").json())["status"] != "pending" and j,
        30,
        "submitted",
    )
    assert started["status"] == "processing", started

    # WHEN the account runs out of credits, and a second job is submitted meanwhile
    sim.update(credits_exhausted=True, credits_exhausted_status=status)
    waiting = api.post("/v1/chat/completions", json=body).json()

    # THEN both wait, saying why; neither fails
    for job_id in (running["id"], waiting["id"]):
        job = wait_until(
            lambda job_id=job_id: (j := api.get(f"/v1/jobs/{job_id}").json()).get("paused_reason") and j,
            30,
            "paused",
        )
        assert job["status"] in ("pending", "processing")
        assert job["paused_reason"] == "xai_account_blocked"
    time.sleep(4)
    assert {api.get(f"/v1/jobs/{j}").json()["status"] for j in (running["id"], waiting["id"])} <= {
        "pending",
        "processing",
    }
    assert account_events(inbox) == ["account.blocked"]

    # WHEN credits return, both complete by themselves, and the first was submitted to xAI once
    sim.update(credits_exhausted=False)
    for job_id in (running["id"], waiting["id"]):
        job = wait_for_status(api, job_id, statuses=TERMINAL, timeout=60)
        assert job["status"] == "completed", job
        assert job["result"]["choices"][0]["message"]["content"]
        assert "paused_reason" not in job
    submits = [c for c in sim.calls if c.path == CHAT and c.status == 200 and (c.body or {}).get("deferred")]
    assert len(submits) == 2, "each job submitted once"
    assert account_events(inbox) == ["account.blocked", "account.resumed"]
