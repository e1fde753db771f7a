"""What callers see of a job: the seed's shape, with presigned links to stored results."""

import json

from . import aws, batches, jobs
from .files import batch_file_id
from .settings import get_settings
from .xai import DEFERRED_CHAT

PRESIGNED_URL_SECONDS = 3600


def video_key(job_id: str) -> str:
    return f"jobs/{job_id}/video.mp4"


def result_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


def presigned_get(key: str) -> str:
    return aws.client("s3").generate_presigned_url(
        "get_object",
        Params={"Bucket": get_settings().data_bucket, "Key": key},
        ExpiresIn=PRESIGNED_URL_SECONDS,
    )


def job_view(job: dict, *, with_result: bool = True) -> dict:
    completed = job["status"] == jobs.COMPLETED
    data = None
    if completed and job.get("video_key"):
        data = [{"url": presigned_get(job["video_key"])}]
    result = None
    if completed and with_result and job["kind"] == DEFERRED_CHAT and job.get("result_key"):
        body = aws.client("s3").get_object(Bucket=get_settings().data_bucket, Key=job["result_key"])["Body"]
        result = json.loads(body.read())
    return {
        "id": job["id"],
        "object": "job",
        "kind": job["kind"],
        "model": job.get("model"),
        "status": job["status"],
        "created": job["created"],
        "updated": job["updated"],
        "deadline": job["deadline"],
        "progress": job.get("progress"),
        "attempts": job.get("attempts", 0),
        "data": data,
        "result": result,
        "error": job.get("error"),
    }


def batch_view(batch: dict, *, links: bool = True) -> dict:
    """A batch as OpenAI's Batch API shapes it, with presigned links to its files once it has ended."""
    if "request_counts" in batch:
        counts = batch["request_counts"]
    else:
        counts = {
            "total": batch["lines"],
            "completed": batch["done"] - batch["failed"],
            "failed": batch["failed"],  # the ingest's error lines are counted here too
        }
    ended = batch["status"] in batches.TERMINAL and "output_key" in batch
    view = {
        "id": batch["id"],
        "object": "batch",
        "endpoint": batch["endpoint"],
        "errors": batch.get("errors"),
        "input_file_id": batch.get("input_file_id"),
        "completion_window": batch["completion_window"],
        "status": batch["status"],
        "output_file_id": batch_file_id(batch["id"], "output") if ended else None,
        "error_file_id": batch_file_id(batch["id"], "errors") if ended else None,
        "request_counts": counts,
        "metadata": batch.get("metadata") or {},
    }
    for moment in (
        "created",
        "in_progress",
        "expires",
        "finalizing",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    ):
        view[f"{moment}_at"] = batch.get(f"{moment}_at")
    if links and ended:
        view["output_file_url"] = presigned_get(batch["output_key"])
        view["error_file_url"] = presigned_get(batch["errors_key"])
    return view
