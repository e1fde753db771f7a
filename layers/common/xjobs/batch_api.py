"""HTTP routes for batch input files and batches (shaped like OpenAI's Files and Batch APIs)."""

import hashlib
from typing import Annotated, Literal

from aws_lambda_powertools.event_handler.router import Router
from pydantic import BaseModel, ConfigDict, Field

from . import aws, batches
from .api import idempotency_key_of, list_page, page_limit, paused, tenant_of
from .batch_ingest import INCOMING_PREFIX
from .file_api import file_store
from .files import FileNotFound
from .ids import new_id
from .models import BadRequest, validate_body
from .observability import logger
from .settings import get_settings
from .submission import IdempotencyKeyReused
from .views import batch_view

router = Router()

MAX_COMPLETION_WINDOW_SECONDS = 86400
MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512


class NewBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(pattern=r"^file_[0-9A-Z]{26}$", description="an uploaded file's id")
    endpoint: Literal["/v1/chat/completions"] = "/v1/chat/completions"
    # OpenAI accepts "24h" only; shorter windows ("90s", "30m", "2h") end a batch sooner.
    completion_window: str = Field(default="24h", pattern=r"^[1-9][0-9]{0,5}[smh]$", max_length=7)
    # OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        dict[
            Annotated[str, Field(max_length=MAX_METADATA_KEY_CHARS)],
            Annotated[str, Field(max_length=MAX_METADATA_VALUE_CHARS)],
        ]
        | None
    ) = Field(default=None, max_length=MAX_METADATA_PAIRS)

    def window_seconds(self) -> int:
        seconds = int(self.completion_window[:-1]) * {"s": 1, "m": 60, "h": 3600}[self.completion_window[-1]]
        if seconds > MAX_COMPLETION_WINDOW_SECONDS:
            raise BadRequest("field 'completion_window': must be at most 24h")
        return seconds


def _body(model: type[BaseModel]):
    return validate_body(model, router.current_event.body or "{}")


def _batch_id_for_key(tenant: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()[:26].upper()
    return f"batch_{digest}"


def _store() -> batches.BatchStore:
    settings = get_settings()
    return batches.BatchStore(settings.batches_table, settings.batch_items_table)


@router.post("/v1/batches")
def create_batch():
    request = _body(NewBatch)
    tenant = tenant_of(router)
    settings = get_settings()
    s3 = aws.client("s3")
    try:
        source = file_store().get(request.input_file_id, tenant)
    except FileNotFound:
        source = None
    if source is None or source.get("bytes") is None:
        raise BadRequest(f"field 'input_file_id': no uploaded file {request.input_file_id}") from None
    key = idempotency_key_of(router)
    # With an Idempotency-Key the batch's id follows from it, so a retry finds the batch it made.
    batch_id = _batch_id_for_key(tenant, key) if key else new_id("batch")
    store = _store()
    incoming = f"{INCOMING_PREFIX}{batch_id}.jsonl"
    batch = batches.new_batch(
        batch_id,
        tenant=tenant,
        input_key=incoming,
        input_file_id=request.input_file_id,
        window_seconds=request.window_seconds(),
        completion_window=request.completion_window,
        metadata=request.metadata or {},
    )
    if not store.create(batch):
        existing = store.get(batch_id)
        if existing["input_file_id"] != request.input_file_id or existing["metadata"] != (
            request.metadata or {}
        ):
            raise IdempotencyKeyReused(key)
        return batch_view(existing)
    # The copy under batches/incoming/ is what starts the ingest (an S3 event), as for a direct upload.
    s3.copy_object(
        Bucket=settings.data_bucket,
        Key=incoming,
        CopySource={"Bucket": settings.data_bucket, "Key": source["key"]},
        Metadata={"xjobs-batch-id": batch_id, "xjobs-tenant": tenant},
        MetadataDirective="REPLACE",
    )
    logger.info("batch created", extra={"batch_id": batch_id})
    return batch_view(batch)


@router.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    batch = _store().get_for_tenant(batch_id, tenant_of(router))
    return paused(batch_view(batch), batch["status"] in batches.RUNNING)


@router.get("/v1/batches")
def list_batches():
    params = router.current_event.query_string_parameters or {}
    found, has_more = _store().list(tenant_of(router), limit=page_limit(params), after=params.get("after"))
    return list_page([batch_view(batch, links=False) for batch in found], has_more)


@router.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    batch = _store().cancel(batch_id, tenant_of(router))
    logger.info("batch cancel requested", extra={"batch_id": batch_id})
    return batch_view(batch)
