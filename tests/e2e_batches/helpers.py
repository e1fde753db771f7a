"""Batch files, uploads and waits shared by the chat-batch end-to-end tests."""

import json
import time

import httpx

from local.stack import LocalStack

SIGV4 = "X-Amz-Algorithm=AWS4-HMAC-SHA256"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def request_line(custom_id: str, content: str = "hello", **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "grok-4", "messages": [{"role": "user", "content": content}], **body},
    }


def jsonl(lines: list) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


class Batches:
    def __init__(self, stack: LocalStack, api: httpx.Client):
        self.stack, self.api = stack, api
        self.bucket = stack.resources.physical["DataBucket"]

    def upload(self, content: bytes) -> str:
        """POST /v1/files with OpenAI's multipart upload, as the openai SDK sends it; returns the file id."""
        reply = self.api.post(
            "/v1/files", files={"file": ("input.jsonl", content)}, data={"purpose": "batch"}
        )
        assert reply.status_code == 200, reply.text
        return reply.json()["id"]

    def create(self, content: bytes, **options) -> dict:
        reply = self.api.post("/v1/batches", json={"input_file_id": self.upload(content), **options})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait(self, batch_id: str, timeout: float = 120, statuses=TERMINAL) -> dict:
        deadline = time.time() + timeout
        while True:
            batch = self.api.get(f"/v1/batches/{batch_id}").json()
            if batch["status"] in statuses:
                return batch
            if time.time() > deadline:
                raise AssertionError(f"batch {batch_id} still {batch['status']} after {timeout} s: {batch}")
            time.sleep(0.3)

    def run(self, lines: list, timeout: float = 120, **options) -> tuple[dict, list[dict], list[dict]]:
        """Create a batch from these lines, wait for its end; returns it with its output and error lines."""
        batch = self.wait(self.create(jsonl(lines), **options)["id"], timeout)
        return batch, read_lines(batch.get("output_file_url")), read_lines(batch.get("error_file_url"))

    def put_incoming(self, key: str, content: bytes, **metadata: str) -> None:
        self.stack.client("s3").put_object(Bucket=self.bucket, Key=key, Body=content, Metadata=metadata)


def read_lines(url: str | None) -> list[dict]:
    if not url:
        return []
    reply = httpx.get(url, timeout=60)
    assert reply.status_code == 200, reply.text
    return [json.loads(line) for line in reply.text.splitlines() if line]


def assert_each_once(custom_ids: list[str], output: list[dict], errors: list[dict]) -> None:
    """Output lines + error lines = input lines, each custom_id exactly once."""
    seen = [line["custom_id"] for line in output + errors]
    assert len(seen) == len(custom_ids), (len(seen), len(custom_ids))
    assert sorted(seen) == sorted(custom_ids)
