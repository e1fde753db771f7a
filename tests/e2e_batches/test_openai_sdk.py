"""The openai SDK, unchanged but for base_url and api_key, runs OpenAI's Batch recipe end to end
(upload, create, retrieve until done, download output and errors, list, cancel, delete) and raises
its typed errors with our messages and codes."""

import json
import time

import httpx
import openai
import pytest

from .helpers import TERMINAL, jsonl, request_line


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=stack.api_key, max_retries=0)


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 120):
    deadline = time.time() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in TERMINAL:
        assert time.time() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch_id)
    return batch


def test_the_openai_batch_recipe(client, sim):
    lines = [request_line(f"task-{i}", f"question {i}") for i in range(8)]
    lines.append({"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}})
    content = jsonl(lines)
    uploaded = client.files.create(file=("batchinput.jsonl", content), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", len(content))
    assert uploaded.filename == "batchinput.jsonl" and uploaded.status == "processed"
    assert client.files.retrieve(uploaded.id).model_dump() == uploaded.model_dump()
    assert client.files.content(uploaded.id).content == content

    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"description": "nightly eval job"},
    )
    assert created.status == "validating" and created.metadata == {"description": "nightly eval job"}
    batch = _wait(client, created.id)
    assert batch.status == "completed", batch
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        9,
        8,
        1,
    )

    output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
    assert [line["custom_id"] for line in output] == [f"task-{i}" for i in range(8)]
    assert output[3]["response"]["body"]["choices"][0]["message"]["content"] == "echo: question 3"
    errors = [json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()]
    assert [line["custom_id"] for line in errors] == ["wrong-url"]
    output_file = client.files.retrieve(batch.output_file_id)
    assert output_file.purpose == "batch_output" and output_file.bytes > 0

    assert created.id in [b.id for b in client.batches.list(limit=100)]
    assert uploaded.id in [f.id for f in client.files.list()]

    deleted = client.files.delete(uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(openai.NotFoundError) as gone:
        client.files.retrieve(uploaded.id)
    assert gone.value.code == "not_found" and uploaded.id in gone.value.message
    assert uploaded.id not in [f.id for f in client.files.list()]

    with pytest.raises(openai.ConflictError):  # it has ended
        client.batches.cancel(batch.id)


def test_cancel_through_the_sdk(client, sim):
    sim.update(chat_latency_median=0.5, chat_latency_sigma=0.01)
    uploaded = client.files.create(
        file=("many.jsonl", jsonl([request_line(f"c-{i}") for i in range(150)])), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while client.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    ended = _wait(client, batch.id)
    assert ended.status == "cancelled"
    output = client.files.content(ended.output_file_id).text.splitlines()
    errors = [json.loads(line) for line in client.files.content(ended.error_file_id).text.splitlines()]
    assert len(output) < 150 and {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert len(output) + len(errors) == ended.request_counts.total


def test_typed_errors(stack, client):
    wrong = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="xj-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        wrong.batches.list()
    assert unauthenticated.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_01J00000000000000000000000")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file_01J00000000000000000000000")
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.batches.create(
            input_file_id="file_01J00000000000000000000000",
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
    assert bad_file.value.param == "input_file_id" and bad_file.value.code == "invalid_request"
    with pytest.raises(openai.BadRequestError) as bad_purpose:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune")
    assert bad_purpose.value.param == "purpose"
    with pytest.raises(openai.NotFoundError) as no_route:
        client.models.list()
    assert no_route.value.code == "unknown_url"


def test_another_tenants_files_and_batches_are_404(stack, client):
    uploaded = client.files.create(file=("mine.jsonl", jsonl([request_line("mine")])), purpose="batch")
    batch = _wait(
        client,
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    _, key = stack.create_tenant(name="stranger")
    stranger = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=key, max_retries=0)
    for attempt in (
        lambda: stranger.files.retrieve(uploaded.id),
        lambda: stranger.files.content(uploaded.id),
        lambda: stranger.files.delete(uploaded.id),
        lambda: stranger.files.content(batch.output_file_id),
        lambda: stranger.files.retrieve(batch.error_file_id),
        lambda: stranger.batches.retrieve(batch.id),
        lambda: stranger.batches.cancel(batch.id),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert list(stranger.files.list()) == [] and list(stranger.batches.list()) == []
    with pytest.raises(openai.BadRequestError):  # a batch from another tenant's file
        stranger.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert client.files.retrieve(uploaded.id).id == uploaded.id  # untouched


def _presigned(api: httpx.Client) -> dict:
    reply = api.post("/v1/files/upload-url", json={"purpose": "batch", "filename": "big.jsonl"})
    assert reply.status_code == 201, reply.text
    return reply.json()


def test_a_presigned_post_uploads_within_its_size_limit(api, client):
    file = _presigned(api)
    assert file["upload"]["max_bytes"] == 300_000 and file["bytes"] == 0
    content = jsonl([request_line(f"p-{i}") for i in range(3)])
    posted = httpx.post(
        file["upload"]["url"], data=file["upload"]["fields"], files={"file": content}, timeout=30
    )
    assert posted.status_code == 204, posted.text
    assert client.files.retrieve(file["id"]).bytes == len(content)
    batch = _wait(
        client,
        client.batches.create(
            input_file_id=file["id"], endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert batch.request_counts.completed == 3


def test_a_presigned_post_over_its_size_limit_is_refused(api, client):
    file = _presigned(api)
    too_big = b"x" * 300_001
    posted = httpx.post(
        file["upload"]["url"], data=file["upload"]["fields"], files={"file": too_big}, timeout=30
    )
    assert posted.status_code == 400 and b"EntityTooLarge" in posted.content
    assert client.files.retrieve(file["id"]).bytes == 0
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=file["id"], endpoint="/v1/chat/completions", completion_window="24h"
        )
    other_key = dict(file["upload"]["fields"], key="files/someone-else/file.jsonl")
    posted = httpx.post(file["upload"]["url"], data=other_key, files={"file": b"{}"}, timeout=30)
    assert posted.status_code == 403  # the policy holds the key


def test_a_multipart_upload_over_the_lambda_limit_points_to_the_presigned_route(api):
    reply = api.post(
        "/v1/files", files={"file": ("big.jsonl", b"x" * (4 * 1024 * 1024 + 1))}, data={"purpose": "batch"}
    )
    assert reply.status_code == 400
    assert "/v1/files/upload-url" in reply.json()["error"]["message"]
    assert (
        api.post("/v1/files", json={"purpose": "batch"})
        .json()["error"]["message"]
        .startswith("POST /v1/files takes a multipart/form-data upload")
    )
