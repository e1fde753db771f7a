"""The poll loop's schedule and error text (xjobs.loop.next_wait, describe_step_error)."""

import json
import math

import pytest

from xjobs import loop
from xjobs.loop import MAX_POLLS, describe_step_error, next_wait

LARGEST_DEADLINE = 86400  # the template's JobTimeoutMaxSeconds


def polls_to_cover(deadline: int, min_wait: int, max_wait: int) -> tuple[int, int]:
    """Run the loop's arithmetic: each poll counts, then waits next_wait; the last poll sees the deadline."""
    polls, elapsed = 0, 0
    while True:
        polls += 1
        left = deadline - elapsed
        if left <= 0:
            return polls, elapsed
        elapsed += next_wait(polls, left, min_wait, max_wait)


def test_the_wait_grows_from_the_minimum_to_the_cap():
    waits = [next_wait(polls, 600, 1, 60) for polls in range(1, 20)]

    assert waits[0] == 1
    assert waits == sorted(waits), "the wait never shrinks while time is plentiful"
    assert waits[-1] == 60
    assert max(waits) == 60


def test_the_wait_grows_by_the_growth_factor():
    assert [next_wait(polls, 600, 2, 60) for polls in range(1, 6)] == [2, 3, 5, 7, 11]
    assert loop.WAIT_GROWTH == 1.5


@pytest.mark.parametrize("seconds_left", [0, 1, 2, 5, 30, 59, 100, 3599])
@pytest.mark.parametrize("polls", [1, 5, 20, 500, MAX_POLLS - 1, MAX_POLLS, MAX_POLLS + 5])
def test_the_wait_never_goes_past_the_deadline_plus_one(polls, seconds_left):
    wait = next_wait(polls, seconds_left, 2, 60)

    assert 1 <= wait <= seconds_left + 1


@pytest.mark.parametrize("seconds_left", [-10, -0.5, 0.3, 0.999])
def test_at_or_past_the_deadline_the_wait_is_one_or_two_seconds(seconds_left):
    # Step Functions waits whole seconds: a fractional remainder is rounded up.
    assert next_wait(3, seconds_left, 5, 60) in (1, 2)


def test_with_a_long_deadline_the_wait_spreads_to_fit_the_poll_budget():
    # 86400 s over the polls left in the budget needs more than the cap of 60 s per poll
    spread = math.ceil(LARGEST_DEADLINE / (MAX_POLLS - 1))
    assert spread > 60, "precondition: the budget is tight enough to need spreading"

    assert next_wait(1, LARGEST_DEADLINE, 1, 60) == spread


@pytest.mark.parametrize(("min_wait", "max_wait"), [(1, 60), (2, 60), (1, 2), (1, 1), (10, 300)])
def test_the_largest_deadline_is_covered_within_max_polls(min_wait, max_wait):
    polls, elapsed = polls_to_cover(LARGEST_DEADLINE, min_wait, max_wait)

    assert elapsed <= LARGEST_DEADLINE + 1
    assert polls <= MAX_POLLS, f"{polls} polls would exceed the history budget of {MAX_POLLS}"


def test_a_short_deadline_uses_few_polls():
    polls, elapsed = polls_to_cover(3600, 1, 60)

    assert elapsed <= 3601
    assert polls < 100


# -- describe_step_error ---------------------------------------------------------------------------

LAMBDA_CAUSE = {
    "errorMessage": "xAI answered 503 (3 attempts)",
    "errorType": "XaiUnavailable",
    "requestId": "4f1c",
    "stackTrace": ['  File "/var/task/app.py", line 12, in handler\n', "    raise XaiUnavailable(...)\n"],
}


def test_the_message_is_the_lambda_error_message_without_the_stack_trace():
    error = {"Error": "XaiUnavailable", "Cause": json.dumps(LAMBDA_CAUSE)}

    described = describe_step_error(error)

    assert described == {"code": "XaiUnavailable", "message": "xAI answered 503 (3 attempts)"}
    assert "stackTrace" not in json.dumps(described)


def test_a_cause_that_is_not_json_is_kept_as_text():
    described = describe_step_error({"Error": "States.Timeout", "Cause": "the task timed out"})

    assert described == {"code": "States.Timeout", "message": "the task timed out"}


def test_a_missing_error_and_cause_get_defaults():
    assert describe_step_error({}) == {"code": "internal_error", "message": "the job's loop failed"}


def test_a_long_cause_is_cut_to_1000_characters():
    cause = json.dumps({"errorMessage": "x" * 5000})

    assert len(describe_step_error({"Error": "E", "Cause": cause})["message"]) == 1000


@pytest.mark.parametrize("cause", ['"a json string"', "[1, 2]", "42"])
def test_a_json_cause_that_is_not_an_object_is_kept_as_text(cause):
    assert describe_step_error({"Error": "E", "Cause": cause})["message"] == cause


def test_a_json_cause_without_error_message_never_includes_the_stack_trace():
    cause = {key: value for key, value in LAMBDA_CAUSE.items() if key != "errorMessage"}

    described = describe_step_error({"Error": "Runtime.ExitError", "Cause": json.dumps(cause)})

    assert "stackTrace" not in described["message"], (
        "BUG loop.describe_step_error: a Cause object without errorMessage is passed through whole, "
        f"stack trace included: {described['message'][:120]}..."
    )
