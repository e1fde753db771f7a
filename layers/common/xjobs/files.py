"""Files, shaped like OpenAI's Files API: uploaded batch inputs, and the output and error files of batches.

An uploaded file is an item in the files table (its tenant, name, purpose, size) and an object under
`files/<tenant>/<file id>.jsonl`. A batch's output and error files are not copied: their ids name the
batch (`file_<batch id's 26 characters>_output` / `_errors`) and resolve to its objects under
`batches/<batch id>/`, for the batch's tenant only.
"""

import re
import time
from email import policy
from email.parser import BytesParser

from boto3.dynamodb.conditions import Key

from . import aws, batches
from .jobs import plain

BATCH_FILE = re.compile(r"^file_([0-9A-Z]{26})_(output|errors)$")


class FileNotFound(LookupError):
    pass


def upload_key(tenant: str, file_id: str) -> str:
    return f"files/{tenant}/{file_id}.jsonl"


def batch_file_id(batch_id: str, which: str) -> str:
    """The file id of a batch's "output" or "errors" file."""
    return f"file_{batch_id.removeprefix('batch_')}_{which}"


def file_view(item: dict) -> dict:
    return {
        "id": item["id"],
        "object": "file",
        "bytes": item.get("bytes") or 0,
        "created_at": item["created_at"],
        "filename": item.get("filename") or f"{item['id']}.jsonl",
        "purpose": item["purpose"],
        "status": "processed" if item.get("bytes") is not None else "uploaded",
        "expires_at": item.get("expires_at"),
        "status_details": None,
    }


class FileStore:
    def __init__(
        self, files_table: str, bucket: str, batch_store: batches.BatchStore, retention_days: int = 7
    ):
        self.table = aws.table(files_table)
        self.bucket = bucket
        self.batches = batch_store
        self.retention_seconds = retention_days * 86400

    def create(self, item: dict) -> dict:
        # The bucket's lifecycle deletes the object after the same time; TTL deletes the record (lazily).
        item.setdefault("expires_at", item["created_at"] + self.retention_seconds)
        self.table.put_item(Item={k: v for k, v in item.items() if v is not None})
        return item

    def get(self, file_id: str, tenant: str) -> dict:
        """The file's record with its S3 key; FileNotFound for another tenant's file or a deleted one."""
        found = BATCH_FILE.match(file_id)
        if found:
            return self._batch_file(file_id, f"batch_{found.group(1)}", found.group(2), tenant)
        item = self.table.get_item(Key={"id": file_id}, ConsistentRead=True).get("Item")
        if not item or item["tenant"] != tenant or item.get("expires_at", now() + 1) <= now():
            raise FileNotFound(file_id)
        item = plain(item)
        if item.get("bytes") is None:  # a presigned upload: its size once the object is there
            size = self._size(item["key"])
            if size is not None:
                item["bytes"] = size
                self.table.update_item(
                    Key={"id": file_id},
                    UpdateExpression="SET #b = :b",
                    ExpressionAttributeNames={"#b": "bytes"},
                    ExpressionAttributeValues={":b": size},
                )
        return item

    def _batch_file(self, file_id: str, batch_id: str, which: str, tenant: str) -> dict:
        batch = self.batches.get(batch_id)
        if not batch or batch["tenant"] != tenant or batch["status"] not in batches.TERMINAL:
            raise FileNotFound(file_id)
        key = batch.get("output_key" if which == "output" else "errors_key")
        size = self._size(key) if key else None
        if size is None:
            raise FileNotFound(file_id)
        ended = next((batch.get(f"{s}_at") for s in ("completed", "failed", "expired", "cancelled")), None)
        return {
            "id": file_id,
            "tenant": tenant,
            "key": key,
            "bytes": size,
            "created_at": ended or batch["created_at"],
            "filename": f"{batch_id}_{which}.jsonl",
            "purpose": "batch_output",
        }

    def _size(self, key: str) -> int | None:
        s3 = aws.client("s3")
        try:
            return s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except s3.exceptions.ClientError:
            return None

    def list(self, tenant: str, *, limit: int, after: str | None, purpose: str | None, ascending: bool):
        """The tenant's uploaded files, newest first unless ``ascending``, after the file ``after``."""
        condition = Key("tenant").eq(tenant)
        if after:
            condition &= Key("id").gt(after) if ascending else Key("id").lt(after)
        found, start = [], {}
        while len(found) <= limit:
            page = self.table.query(
                IndexName="by-tenant", KeyConditionExpression=condition, ScanIndexForward=ascending, **start
            )
            found += [
                plain(i)
                for i in page["Items"]
                if (not purpose or i["purpose"] == purpose) and i.get("expires_at", now() + 1) > now()
            ]
            if "LastEvaluatedKey" not in page:
                break
            start = {"ExclusiveStartKey": page["LastEvaluatedKey"]}
        return found[:limit], len(found) > limit

    def delete(self, file_id: str, tenant: str) -> None:
        item = self.get(file_id, tenant)
        aws.client("s3").delete_object(Bucket=self.bucket, Key=item["key"])
        if not BATCH_FILE.match(file_id):
            self.table.delete_item(Key={"id": file_id})

    def content_url(self, file_id: str, tenant: str, expires_in: int) -> str:
        item = self.get(file_id, tenant)
        if item.get("bytes") is None:
            raise FileNotFound(file_id)
        return aws.client("s3").generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": item["key"]}, ExpiresIn=expires_in
        )


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as {field name: (file name, bytes)}; empty if it cannot be read."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return {}
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def now() -> int:
    return int(time.time())
