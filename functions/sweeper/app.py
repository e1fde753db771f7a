"""The sweeper: restarts or fails batches and jobs that stopped making progress (see xjobs.sweeper)."""

from xjobs import sweeper
from xjobs.observability import logger


@logger.inject_lambda_context(clear_state=True)
def handler(event, context):
    if "Records" in event:  # the FailedInvocationsQueue: async invocations that failed every attempt
        return {"recovered": sweeper.handle_failures(event)}
    return sweeper.sweep()  # the schedule
