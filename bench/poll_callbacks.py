"""Poll callbacks: poll_efficiency's 50 video jobs again, on a stack whose upstream calls back.

Ours: the local stack with upstream callbacks on (the simulator POSTs to the stack's callback route when
a job finishes; the job's loop, parked on its task token, wakes and polls once) and a 300 s fallback
poll. Same simulator configuration and seed as poll_efficiency, so the same 50 (duration, failure)
draws, and the same baseline (the xAI docs' poller, measured again in this run). How the figures are
taken is poll_efficiency's; see there.

A job whose callback goes missing would be polled only at the fallback, 300 s after its submit: the
stack is watched for CALLBACK_TIMEOUT after the last submit (well past the longest job), and a job not
seen ending by then counts as undetected (which misses the targets) instead of being waited for.
"""

from .common import row, summarize
from .poll_efficiency import JOBS, PARAMETERS, complete, counts, measure, stat_rows

# 50 jobs ending together call back together: room for them on the callback route's own function.
CALLBACK_PARAMETERS = {
    **PARAMETERS,
    "CallbackFallbackSeconds": "300",
    "CallbackConcurrency": "50",
    "CallbackThrottleBurstLimit": "100",
}
CALLBACK_TIMEOUT = 150
TARGET_CALLS = 1
TARGET_DELAY_S = 1.0
WARMUP_MEDIAN_S = 1.0


def run() -> dict:
    # A callback needs nothing learned, but 50 jobs started at once need 50 warm environments of each
    # function (cold_start measures cold ones): the warm-up's jobs take 1 s.
    measured = measure(
        CALLBACK_PARAMETERS,
        upstream_callbacks=True,
        timeout=CALLBACK_TIMEOUT,
        warmup_jobs=JOBS,
        warmup_median_s=WARMUP_MEDIAN_S,
    )
    ours = measured["ours"]
    calls, delay = ours["status_calls_per_job"], ours["detection_delay_s"]
    callback = summarize(
        [j["callback_after_finish_s"] for j in ours["jobs"] if j["callback_after_finish_s"] is not None]
    )
    ours["callback_after_finish_s"] = callback
    ours["status_calls_max"] = max((j["status_calls"] for j in ours["jobs"]), default=None)
    ours["jobs_over_one_status_call"] = [j["job"] for j in ours["jobs"] if j["status_calls"] > TARGET_CALLS]
    ours["callbacks_received"] = ours["lambda_invocations"].get("ApiFunction", 0) - JOBS
    calls_met = complete(measured) and calls["mean"] <= TARGET_CALLS
    delay_met = complete(measured) and delay["mean"] < TARGET_DELAY_S
    rows = [
        *stat_rows(measured, "status_calls_per_job", "status calls per job", "calls",
                   f"≤ {TARGET_CALLS} per job", calls_met),
        *stat_rows(measured, "detection_delay_s", "detection delay", "s",
                   f"< {TARGET_DELAY_S:g} s", delay_met),
        row("callback recorded after xAI finished, mean", callback["mean"], None, "s"),
    ]  # fmt: skip
    return {
        "benchmark": "poll_callbacks",
        **measured,
        "callback_timeout_s": CALLBACK_TIMEOUT,
        "targets": {
            "status_calls_mean_max": TARGET_CALLS,
            "status_calls_met": calls_met,
            "detection_delay_mean_below_s": TARGET_DELAY_S,
            "detection_delay_met": delay_met,
            "both_met": calls_met and delay_met,
        },
        "rows": rows,
    }


def report(result: dict) -> str:
    ours = result["ours"]
    met = "met" if result["targets"]["both_met"] else "missed"
    over = ours["jobs_over_one_status_call"]
    return (
        f"Poll callbacks: {result['jobs']} video jobs each side, upstream callbacks on "
        f"(fallback poll {ours['parameters'].get('CallbackFallbackSeconds')} s); target (≤ {TARGET_CALLS} "
        f"status call per job and < {TARGET_DELAY_S:g} s detection delay, means) {met}. "
        f"Most status calls for one job: {ours['status_calls_max']}; jobs with more than {TARGET_CALLS}: "
        f"{len(over)}. Callbacks received by the API: {ours['callbacks_received']}. {counts(result)}\n"
    )
