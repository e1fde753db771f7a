"""HTTP routes of OpenAI's Files API (upload, list, retrieve, delete, content), plus the presigned upload
for files larger than API Gateway and Lambda carry.

`POST /v1/files` takes OpenAI's multipart upload. API Gateway hands the body to Lambda base64-encoded
(multipart/form-data is a binary media type of the API), and Lambda takes at most 6 MB of event: so a
multipart upload carries a file of up to MAX_MULTIPART_FILE_BYTES. Larger files (up to the MaxUploadBytes
parameter, 200 MB by default) go through `POST /v1/files/upload-url`: an S3 presigned POST whose policy
holds the size (content-length-range) and the object's key, for a few minutes.
"""

import base64
from typing import Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.router import Router
from pydantic import BaseModel, ConfigDict, Field

from . import aws, batches
from .api import list_page, tenant_of
from .files import FileStore, file_view, now, parse_multipart, upload_key
from .ids import new_id
from .models import BadRequest, validate_body
from .observability import logger
from .settings import get_settings

router = Router()

MAX_MULTIPART_FILE_BYTES = 4 * 1024 * 1024
UPLOAD_URL_SECONDS = 600
CONTENT_URL_SECONDS = 3600
MAX_FILES_PAGE = 10_000


class NewUploadUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: Literal["batch"] = "batch"
    filename: str | None = Field(default=None, max_length=256)


def file_store() -> FileStore:
    settings = get_settings()
    return FileStore(
        settings.files_table,
        settings.data_bucket,
        batches.BatchStore(settings.batches_table, settings.batch_items_table),
        settings.file_retention_days,
    )


def _header(name: str) -> str:
    headers = router.current_event.headers or {}
    return next((v for k, v in headers.items() if k.lower() == name), "")


@router.post("/v1/files")
def create_file():
    content_type = _header("content-type")
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest(
            "POST /v1/files takes a multipart/form-data upload with fields 'file' and 'purpose' "
            "(larger files: POST /v1/files/upload-url)"
        )
    event = router.current_event
    raw = event.body or ""
    body = base64.b64decode(raw) if event.is_base64_encoded else raw.encode("utf-8", "surrogateescape")
    fields = parse_multipart(content_type, body)
    purpose = (fields.get("purpose") or (None, b""))[1].decode("utf-8", "replace").strip()
    if "purpose" not in fields:
        raise BadRequest("field 'purpose': required (\"batch\")")
    if purpose != "batch":
        raise BadRequest(f"field 'purpose': must be \"batch\", not {purpose[:40]!r}")
    if "file" not in fields:
        raise BadRequest("field 'file': required (the JSONL file)")
    filename, content = fields["file"]
    if len(content) > MAX_MULTIPART_FILE_BYTES:
        raise BadRequest(
            f"field 'file': larger than {MAX_MULTIPART_FILE_BYTES} bytes; "
            "upload it through POST /v1/files/upload-url"
        )
    tenant = tenant_of(router)
    file_id = new_id("file")
    key = upload_key(tenant, file_id)
    aws.client("s3").put_object(Bucket=get_settings().data_bucket, Key=key, Body=content)
    item = file_store().create(
        {
            "id": file_id,
            "tenant": tenant,
            "key": key,
            "bytes": len(content),
            "created_at": now(),
            "filename": (filename or f"{file_id}.jsonl")[:256],
            "purpose": purpose,
        }
    )
    logger.info("file uploaded", extra={"file_id": file_id, "bytes": len(content)})
    return Response(200, "application/json", file_view(item))


@router.post("/v1/files/upload-url")
def create_upload_url():
    """Extension: a presigned POST for a file of up to MaxUploadBytes; its id works once it is uploaded."""
    request = validate_body(NewUploadUrl, router.current_event.body or "{}")
    settings = get_settings()
    tenant = tenant_of(router)
    file_id = new_id("file")
    key = upload_key(tenant, file_id)
    post = aws.client("s3").generate_presigned_post(
        Bucket=settings.data_bucket,
        Key=key,
        Conditions=[["content-length-range", 1, settings.max_upload_bytes]],
        ExpiresIn=UPLOAD_URL_SECONDS,
    )
    item = file_store().create(
        {
            "id": file_id,
            "tenant": tenant,
            "key": key,
            "bytes": None,
            "created_at": now(),
            "filename": request.filename or f"{file_id}.jsonl",
            "purpose": request.purpose,
        }
    )
    return Response(
        201,
        "application/json",
        file_view(item)
        | {
            "upload": {
                "method": "POST",
                "url": post["url"],
                "fields": post["fields"],
                "max_bytes": settings.max_upload_bytes,
                "expires_in": UPLOAD_URL_SECONDS,
            }
        },
    )


@router.get("/v1/files")
def list_files():
    params = router.current_event.query_string_parameters or {}
    try:
        limit = int(params.get("limit", 100))
    except ValueError:
        raise BadRequest("parameter 'limit': must be a whole number") from None
    if not 1 <= limit <= MAX_FILES_PAGE:
        raise BadRequest(f"parameter 'limit': must be between 1 and {MAX_FILES_PAGE}")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise BadRequest("parameter 'order': must be asc or desc")
    found, has_more = file_store().list(
        tenant_of(router),
        limit=limit,
        after=params.get("after"),
        purpose=params.get("purpose"),
        ascending=order == "asc",
    )
    return list_page([file_view(item) for item in found], has_more)


@router.get("/v1/files/<file_id>")
def get_file(file_id: str):
    return file_view(file_store().get(file_id, tenant_of(router)))


@router.delete("/v1/files/<file_id>")
def delete_file(file_id: str):
    file_store().delete(file_id, tenant_of(router))
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/v1/files/<file_id>/content")
def file_content(file_id: str):
    """A redirect to the content in S3, so a file of any size comes back (the openai SDK follows it)."""
    url = file_store().content_url(file_id, tenant_of(router), CONTENT_URL_SECONDS)
    return Response(302, "application/json", "", headers={"Location": url})
