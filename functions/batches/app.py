"""The chat-batch functions: ingest (S3 event), workers (SQS), dead letters (SQS) and the finalizer."""

from xjobs import batch_finalize, batch_ingest, batch_worker
from xjobs.observability import logger


@logger.inject_lambda_context(clear_state=True)
def ingest_handler(event, context):
    """An upload under batches/incoming/ (S3 event), or the rest of a file (the ingest's own handover)."""
    if "xjobs_ingest" in event:
        batch_ingest.ingest(event["xjobs_ingest"]["batch_id"], context)
        return {"batches": [event["xjobs_ingest"]["batch_id"]]}
    return {"batches": batch_ingest.handle_s3_event(event, context)}


@logger.inject_lambda_context(clear_state=True)
def worker_handler(event, context):
    return batch_worker.handle(event, context)


@logger.inject_lambda_context(clear_state=True)
def dead_letter_handler(event, context):
    return batch_worker.handle_dead_letters(event, context)


@logger.inject_lambda_context(clear_state=True)
def finalize_handler(event, context):
    logger.append_keys(batch_id=event["batch_id"])
    batch = batch_finalize.finalize(event["batch_id"])
    return {"batch_id": event["batch_id"], "status": batch and batch["status"]}
