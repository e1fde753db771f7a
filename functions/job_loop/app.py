"""The tasks of the deferred-job state machine (statemachine/deferred_job.asl.json)."""

from xjobs import loop
from xjobs.observability import logger


@logger.inject_lambda_context(clear_state=True)
def poll_handler(event, context):
    logger.append_keys(job_id=event["job_id"])
    return loop.poll(event["job_id"], int(event.get("polls", 0)), int(event.get("faults", 0)))


@logger.inject_lambda_context(clear_state=True)
def park_handler(event, context):
    return loop.park(event["job_id"], event["token"], int(event.get("seen_news") or 0))


@logger.inject_lambda_context(clear_state=True)
def finish_handler(event, context):
    logger.append_keys(job_id=event["job_id"])
    return loop.finish(event["job_id"], event.get("error"))
