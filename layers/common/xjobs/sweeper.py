"""The sweeper: no batch or job stays stuck without a signal.

Two ways in, one policy:
- **Failed invocations.** The ingest and the finalizer run asynchronously; when Lambda has retried
  one twice, its on-failure destination (the FailedInvocationsQueue) receives the event and the error,
  and the sweeper gets that record from the queue at once.
- **The schedule** (every few minutes): batches in ``validating``, ``in_progress`` (still ingesting),
  ``cancelling`` or ``finalizing`` whose record has not changed for ``STALLED_AFTER_SECONDS`` (the
  ingest and finalizer touch it as they go), and jobs whose state machine execution ended (failed,
  timed out, aborted) while the job is still active.

What can be restarted is restarted (the ingest from its checkpoint, the finalizer, a new execution
of the job's loop) up to ``STALLED_MAX_RESTARTS`` times; then the batch or job is failed with the
reason, and announced as any other that ended. Both count in the StalledWork metric (Kind, Action),
which an alarm watches, and each leaves a log line.
"""

import json
import time

from . import aws, batches, jobs
from .batch_ingest import INCOMING_PREFIX, open_batch, s3_key
from .observability import logger, metric
from .settings import get_settings
from .submission import execution_input

ENDED_EXECUTIONS = ("FAILED", "TIMED_OUT", "ABORTED")
EXECUTION_LOOKBACK_SECONDS = 2 * 86400  # longer than the longest job deadline the API accepts


def _batches() -> batches.BatchStore:
    settings = get_settings()
    return batches.BatchStore(settings.batches_table, settings.batch_items_table)


# ---- failed invocations (the on-failure destination) -------------------------------------------
def handle_failures(event: dict) -> list[dict]:
    """Records of the FailedInvocationsQueue (SQS event): each an invocation that failed every attempt."""
    done = []
    for record in event.get("Records", []):
        failure = json.loads(record["body"])
        payload = failure.get("requestPayload") or {}
        response = failure.get("responsePayload") or {}
        error = f"{response.get('errorType', 'error')}: {str(response.get('errorMessage', ''))[:300]}"
        function = str(failure.get("requestContext", {}).get("functionArn", ""))
        logger.warning(
            "an asynchronous invocation failed every attempt", extra={"function": function, "error": error}
        )
        for batch_id in _batch_ids(payload):
            batch = _batches().get(batch_id)
            if batch is not None:
                done.append(_recover_batch(batch, f"it failed: {error}"))
    return done


def _batch_ids(payload: dict) -> list[str]:
    """The batches a failed ingest or finalizer event was about."""
    if "batch_id" in payload:  # the finalizer's event
        return [payload["batch_id"]]
    if "xjobs_ingest" in payload:  # the ingest handing a file over to itself
        return [payload["xjobs_ingest"]["batch_id"]]
    found = []
    for record in payload.get("Records", []):
        key = s3_key(record)
        if key.startswith(INCOMING_PREFIX):
            # The batch may not exist yet (a file put straight into the bucket): made as the ingest would.
            found.append(open_batch(record["s3"]["bucket"]["name"], key))
    return found


# ---- the schedule ------------------------------------------------------------------------------
def sweep() -> dict:
    """One scheduled pass over batches and jobs; returns what it did, for the log and the tests."""
    settings = get_settings()
    cutoff = int(time.time()) - settings.stalled_after_seconds
    statuses = (batches.VALIDATING, batches.IN_PROGRESS, batches.CANCELLING, batches.FINALIZING)
    report = {"batches": [], "jobs": []}
    for batch in _batches().stalled(statuses, cutoff):
        outcome = _recover_batch(batch, f"it made no progress for {settings.stalled_after_seconds} s")
        if outcome["action"] != "none":
            report["batches"].append(outcome)
    if settings.state_machine_arn:
        report["jobs"] = _sweep_jobs(settings)
    return report


def _recover_batch(batch: dict, why: str) -> dict:
    """Restart the part of a batch that stopped (ingest or finalizer), or fail the batch if it stopped too
    often. A batch whose workers still have requests out is not stuck: SQS redelivers them."""
    settings = get_settings()
    store = _batches()
    outcome = {"batch_id": batch["id"], "status": batch["status"], "action": "none"}
    if batch["status"] == batches.FINALIZING:
        stage = "finalizer"
    elif batch["status"] in batches.TERMINAL:
        if batch.get(batches.NOTIFIED_FLAG):
            return outcome
        stage = "finalizer"  # ended but not announced: the finalizer announces it
    elif not batch["ingested"]:
        stage = "ingest"
    elif batch["done"] >= batch["lines"]:
        # Every request is accounted for but nobody moved the batch on (a crash between the two).
        if store.claim_finalize(batch["id"]):
            _start("finalizer", batch["id"], settings)
            _count(outcome, "restarted", "finalizer", why)
        return outcome
    else:
        return outcome
    restarts = batch.get("restarts", 0)
    if restarts >= settings.stalled_max_restarts:
        if batch["status"] in batches.TERMINAL:
            logger.error("batch could not be announced", extra={"batch_id": batch["id"], "why": why})
            return outcome
        message = f"the batch's {stage} stopped {restarts + 1} times; the last time {why}"
        if store.fail_stalled(batch, "stalled", message[:1000]):
            _start("finalizer", batch["id"], settings)  # the finalizer announces an ended batch
            _count(outcome, "failed", stage, why)
        return outcome
    if store.note_restart(batch) is not None:
        _start(stage, batch["id"], settings)
        _count(outcome, "restarted", stage, why)
    return outcome


def _start(stage: str, batch_id: str, settings) -> None:
    if stage == "ingest":
        function, payload = settings.batch_ingest_function, {"xjobs_ingest": {"batch_id": batch_id}}
    else:
        function, payload = settings.batch_finalize_function, {"batch_id": batch_id}
    aws.client("lambda").invoke(
        FunctionName=function, InvocationType="Event", Payload=json.dumps(payload).encode()
    )


def _count(outcome: dict, action: str, stage: str, why: str) -> None:
    outcome.update(action=action, stage=stage)
    log = logger.error if action == "failed" else logger.warning
    log(f"stalled batch {action}", extra={"batch_id": outcome["batch_id"], "stage": stage, "why": why})
    metric("StalledWork", Kind="batch", Action=action)


# ---- jobs ----------------------------------------------------------------------------------------
def _sweep_jobs(settings) -> list[dict]:
    """Jobs still active whose execution ended: their loop is gone, nothing would ever move them."""
    sfn = aws.client("stepfunctions")
    store = jobs.JobStore(settings.jobs_table)
    since = time.time() - EXECUTION_LOOKBACK_SECONDS
    report = []
    for status in ENDED_EXECUTIONS:
        pages = sfn.get_paginator("list_executions").paginate(
            stateMachineArn=settings.state_machine_arn, statusFilter=status
        )
        for execution in (e for page in pages for e in page["executions"]):
            if execution["startDate"].timestamp() < since:
                break  # newest first: the rest are older
            outcome = _recover_job(store, sfn, execution["name"], status, settings)
            if outcome:
                report.append(outcome)
    return report


def _recover_job(store: jobs.JobStore, sfn, execution: str, status: str, settings) -> dict | None:
    job_id = execution.split("-", 1)[0]  # "<job id>" or "<job id>-r<n>" (job ids hold no "-")
    job = store.get(job_id)
    if job is None or job["status"] in jobs.TERMINAL or job.get("execution", job_id) != execution:
        return None  # ended, or this execution was already replaced
    restarts = job.get("restarts", 0)
    action = "restarted"
    why = f"its execution {execution} ended {status}"
    if restarts >= settings.stalled_max_restarts:
        error = {
            "code": "stalled",
            "message": f"the job's loop ended {restarts + 1} times; the last time {why}",
        }
        if store.advance(job_id, jobs.FAILED, error=error) is None:
            return None
        action = "failed"  # the new execution finds the job ended and announces it
    new = f"{job_id}-r{restarts + 1}"
    if not store.note_restart(job_id, execution, new):
        return None
    sfn.start_execution(stateMachineArn=settings.state_machine_arn, name=new, input=execution_input(job_id))
    log = logger.error if action == "failed" else logger.warning
    log(f"stalled job {action}", extra={"job_id": job_id, "tenant": job["tenant"], "why": why})
    metric("StalledWork", Kind="job", Action=action)
    return {"job_id": job_id, "action": action, "execution": new}
