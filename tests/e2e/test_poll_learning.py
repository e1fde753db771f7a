"""Jobs teach the stack how long xAI takes, and later jobs of the same profile are polled by it."""

import math
import time
from concurrent.futures import ThreadPoolExecutor

from xjobs.durations import CACHE_SECONDS, MIN_SAMPLES

from .conftest import PARAMETERS
from .helpers import wait_for_status, xai_request_id

# A profile no other test uses: what this test teaches stays its own.
TAUGHT = {"prompt": "a kite over the dunes", "duration": 9, "resolution": "720p"}
UNTAUGHT = {"prompt": "a kite over the dunes", "duration": 10, "resolution": "720p"}
XAI_SECONDS = 3.0


def run(api, body: dict) -> str:
    reply = api.post("/v1/videos/generations", json=body)
    assert reply.status_code == 202, reply.text
    job = wait_for_status(api, reply.json()["id"])
    assert job["status"] == "completed", job
    return job["id"]


def first_status_call_after_submit(stack, sim, job_id: str) -> float:
    request_id = xai_request_id(stack, job_id)
    times = {c.method: c.time for c in reversed(sim.calls) if c.request_id == request_id}
    return times["GET"] - times["POST"]


def test_finished_jobs_teach_their_profile_and_later_jobs_wait_by_it(api, stack, sim):
    # GIVEN xAI taking 3 s for every video
    sim.update(video_duration_median=XAI_SECONDS, video_duration_sigma=0.01, video_failure_rate=0.0)

    # WHEN enough jobs of one profile complete
    with ThreadPoolExecutor(max_workers=MIN_SAMPLES) as pool:
        list(pool.map(lambda _: run(api, TAUGHT), range(MIN_SAMPLES)))

    # THEN the limits table holds what they took, today, for that profile alone
    table = stack.session.resource("dynamodb", endpoint_url=stack.aws_endpoint).Table(
        stack.resources.physical["LimitsTable"]
    )
    day = time.strftime("%Y-%m-%d", time.gmtime())
    learned = table.get_item(Key={"id": f"durations#video.generation|grok-imagine-video|9s|720p#{day}"})[
        "Item"
    ]
    assert learned["samples"] == MIN_SAMPLES
    # Each end is known to within a poll interval (PollMaxWaitSeconds): the midpoint is kept.
    typical = math.exp(float(learned["log_sum"]) / MIN_SAMPLES)
    assert abs(typical - XAI_SECONDS) < float(PARAMETERS["PollMaxWaitSeconds"])
    assert "Item" not in table.get_item(
        Key={"id": f"durations#video.generation|grok-imagine-video|10s|720p#{day}"}
    )

    # AND, once the polls' cached reading of the profile has expired, a new job of the profile waits
    # for its first status call as learned (the cap, 2 s, is below 3 s), while a job of an untaught
    # profile keeps the fixed schedule (1 s first)
    time.sleep(CACHE_SECONDS)
    taught, untaught = run(api, TAUGHT), run(api, UNTAUGHT)
    assert first_status_call_after_submit(stack, sim, taught) >= float(PARAMETERS["PollMaxWaitSeconds"]) - 0.1
    assert (
        first_status_call_after_submit(stack, sim, untaught) < float(PARAMETERS["PollMaxWaitSeconds"]) - 0.3
    )
