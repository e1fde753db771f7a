"""A job's execution can never reach Step Functions' 25,000-event history limit."""

from xjobs.loop import MAX_POLLS, next_wait

from .helpers import wait_for_status

HISTORY_LIMIT = 25_000


def test_events_per_poll_times_the_poll_budget_fits_the_history_limit(api, stack, sim):
    # GIVEN a job that takes several polls
    sim.update(video_duration_median=5, video_duration_sigma=0.01)
    job_id = api.post("/v1/videos/generations", json={"prompt": "slow clouds"}).json()["id"]
    assert wait_for_status(api, job_id)["status"] == "completed"

    # WHEN its execution history is read from the emulator
    machine = stack.resources.physical["JobStateMachine"]
    execution = machine.replace(":stateMachine:", ":execution:") + f":{job_id}"
    events = stack.client("stepfunctions").get_execution_history(executionArn=execution, maxResults=1000)[
        "events"
    ]
    polls = [
        e
        for e in events
        if e["type"] == "TaskStateEntered" and e["stateEnteredEventDetails"]["name"] == "Poll"
    ]

    # THEN even the largest poll budget, with a retry on every poll, stays under the limit
    assert len(polls) >= 3
    per_poll = len(events) / len(polls)
    retry_events = 6 * 3  # Poll's Retry: up to 6 more attempts of 3 events each
    assert (per_poll + retry_events) * MAX_POLLS < HISTORY_LIMIT


def test_the_longest_allowed_deadline_is_covered_within_the_poll_budget():
    deadline = 86_400  # the template's JobTimeoutMaxSeconds default
    elapsed, polls = 0, 0
    while elapsed < deadline:
        polls += 1
        elapsed += next_wait(polls, deadline - elapsed, min_wait=1, max_wait=60)
    assert polls <= MAX_POLLS
