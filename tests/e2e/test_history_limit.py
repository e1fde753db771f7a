"""A job's execution can never reach Step Functions' 25,000-event history limit, faults included."""

import json

from local.cloudformation import ROOT
from xjobs.loop import MAX_FAULTS, MAX_POLLS, next_wait

from .helpers import wait_for_status

HISTORY_LIMIT = 25_000
POLL_RETRIES = 3  # Poll's Retry MaxAttempts in the state machine
PARK_REFUSED = 7  # Park's task refused (5 events) and the Pause it leads to (2)


def events_of(stack, job_id: str) -> list[dict]:
    machine = stack.resources.physical["JobStateMachine"]
    execution = machine.replace(":stateMachine:", ":execution:") + f":{job_id}"
    return stack.client("stepfunctions").get_execution_history(executionArn=execution, maxResults=1000)[
        "events"
    ]


def entered(events: list[dict], name: str) -> list[int]:
    return [
        i
        for i, e in enumerate(events)
        if e["type"].endswith("StateEntered") and e["stateEnteredEventDetails"]["name"] == name
    ]


def test_events_per_poll_and_per_fault_cycle_times_their_budgets_fit_the_history_limit(api, stack, sim):
    # GIVEN a job that takes several polls, and one whose first Poll is throttled past its retries
    sim.update(video_duration_median=5, video_duration_sigma=0.01)
    job_id = api.post("/v1/videos/generations", json={"prompt": "slow clouds"}).json()["id"]
    stack.runtime.inject("PollFunction", "throttle", times=POLL_RETRIES + 1)
    faulted_id = api.post("/v1/videos/generations", json={"prompt": "slow rain"}).json()["id"]
    assert wait_for_status(api, job_id)["status"] == "completed"
    assert wait_for_status(api, faulted_id, timeout=90)["status"] == "completed"

    # WHEN their execution histories are read from the emulator
    events = events_of(stack, job_id)
    polls = entered(events, "Poll")
    faulted = events_of(stack, faulted_id)
    first, second = entered(faulted, "Poll")[:2]
    fault_cycle = second - first  # the throttled Poll with its retries, counted, backed off

    # THEN the largest budgets, a retry on every poll and a refused Park, stay under the limit
    assert len(polls) >= 3
    per_poll = len(events) / len(polls)
    assert fault_cycle >= 3 * (POLL_RETRIES + 1), "every attempt is in the history"
    worst = (per_poll + 3 * POLL_RETRIES + PARK_REFUSED) * MAX_POLLS + fault_cycle * MAX_FAULTS
    assert worst < HISTORY_LIMIT, f"{per_poll:.1f} per poll, {fault_cycle} per fault cycle"


def test_the_state_machine_gives_up_after_the_fault_budget_the_poll_budget_counts():
    definition = json.loads((ROOT / "statemachine" / "deferred_job.asl.json").read_text())
    budget = definition["States"]["Fault budget?"]["Choices"][0]
    retry = definition["States"]["Poll"]["Retry"][0]

    assert budget["NumericGreaterThanEquals"] == MAX_FAULTS
    assert retry["MaxAttempts"] == POLL_RETRIES


def test_the_longest_allowed_deadline_is_covered_within_the_poll_budget():
    deadline = 86_400  # the template's JobTimeoutMaxSeconds default
    elapsed, polls = 0, 0
    while elapsed < deadline:
        polls += 1
        elapsed += next_wait(polls, deadline - elapsed, min_wait=1, max_wait=60)
    assert polls <= MAX_POLLS
