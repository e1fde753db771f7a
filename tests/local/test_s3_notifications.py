"""S3 notifications as S3 sends them: UploadBucket notifies UploadFunction of s3:ObjectCreated:* under
incoming/, asynchronously, with S3's event shape and key encoding."""

import re
import time
import uuid
from datetime import datetime

import httpx
import pytest

from .conftest import invocations, wait_until


@pytest.fixture
def bucket(stack):
    return stack.resources.physical["UploadBucket"]


def events_for(stack, key: str) -> list:
    """The UploadFunction invocations whose event names the key (as S3 encodes it)."""
    encoded = key.replace(" ", "+")
    return [
        i
        for i in invocations(stack, "UploadFunction")
        if i.event["Records"][0]["s3"]["object"]["key"] == encoded
    ]


def settle(stack) -> None:
    wait_until(lambda: stack.runtime.async_pending == 0, what="pending asynchronous events")


def test_a_put_under_the_prefix_sends_the_s3_event(stack, bucket):
    key = f"incoming/{uuid.uuid4().hex}/my report 1.csv"
    put = stack.client("s3").put_object(Bucket=bucket, Key=key, Body=b"a,b\n1,2\n")

    (invocation,) = wait_until(lambda: events_for(stack, key), what="the event")

    (record,) = invocation.event["Records"]
    assert record["eventVersion"] == "2.1"
    assert record["eventSource"] == "aws:s3"
    assert record["awsRegion"] == "us-east-1"
    assert record["eventName"] == "ObjectCreated:Put"
    assert datetime.fromisoformat(record["eventTime"].replace("Z", "+00:00"))
    assert record["s3"]["bucket"]["name"] == bucket
    assert record["s3"]["bucket"]["arn"] == f"arn:aws:s3:::{bucket}"
    s3_object = record["s3"]["object"]
    assert s3_object["key"] == key.replace(" ", "+")  # "/" stays as it is, a space becomes "+"
    assert s3_object["size"] == 8
    assert s3_object["eTag"] == put["ETag"].strip('"')
    assert re.fullmatch(r"[0-9A-F]{16,}", s3_object["sequencer"])
    assert record["s3"]["configurationId"]


def test_the_put_does_not_wait_for_the_function(stack, bucket):
    key = f"incoming/slow-{uuid.uuid4().hex}.txt"
    stack.client("s3").put_object(Bucket=bucket, Key=key, Body=b"x")
    put_returned = time.time()

    (invocation,) = wait_until(lambda: events_for(stack, key), what="the event")

    assert invocation.ended - invocation.started >= 1  # the function took a second ...
    assert put_returned < invocation.ended  # ... and the PutObject had returned before it ended


def test_a_put_outside_the_prefix_sends_no_event(stack, bucket):
    tag = uuid.uuid4().hex
    s3 = stack.client("s3")
    s3.put_object(Bucket=bucket, Key=f"other/{tag}.txt", Body=b"x")
    s3.put_object(Bucket=bucket, Key=f"incoming{tag}.txt", Body=b"x")  # a prefix is not a folder
    s3.put_object(Bucket=bucket, Key=f"incoming/{tag}.txt", Body=b"x")

    wait_until(lambda: events_for(stack, f"incoming/{tag}.txt"), what="the event under the prefix")
    settle(stack)

    keys = [i.event["Records"][0]["s3"]["object"]["key"] for i in invocations(stack, "UploadFunction")]
    assert [k for k in keys if tag in k] == [f"incoming/{tag}.txt"]


def test_an_upload_to_a_presigned_url_sends_the_event(stack, bucket):
    key = f"incoming/{uuid.uuid4().hex}/upload.jsonl"
    url = stack.client("s3").generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
    )

    assert httpx.put(url, content=b'{"a": 1}\n').status_code == 200

    (invocation,) = wait_until(lambda: events_for(stack, key), what="the event")
    assert invocation.event["Records"][0]["eventName"] == "ObjectCreated:Put"
    assert invocation.event["Records"][0]["s3"]["object"]["size"] == 9


def test_copies_and_multipart_uploads_send_one_event_each(stack, bucket):
    tag = uuid.uuid4().hex
    s3 = stack.client("s3")
    s3.put_object(Bucket=bucket, Key=f"source/{tag}.txt", Body=b"copied")
    s3.copy_object(Bucket=bucket, Key=f"incoming/{tag}-copy.txt", CopySource=f"{bucket}/source/{tag}.txt")
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"incoming/{tag}-parts.txt")
    part = s3.upload_part(
        Bucket=bucket, Key=f"incoming/{tag}-parts.txt", UploadId=upload["UploadId"], PartNumber=1, Body=b"p1"
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=f"incoming/{tag}-parts.txt",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )

    wait_until(
        lambda: (
            events_for(stack, f"incoming/{tag}-copy.txt") and events_for(stack, f"incoming/{tag}-parts.txt")
        ),
        what="both events",
    )
    settle(stack)

    (copied,) = events_for(stack, f"incoming/{tag}-copy.txt")
    (completed,) = events_for(stack, f"incoming/{tag}-parts.txt")
    assert copied.event["Records"][0]["eventName"] == "ObjectCreated:Copy"
    assert completed.event["Records"][0]["eventName"] == "ObjectCreated:CompleteMultipartUpload"


def test_a_failing_function_gets_the_event_twice_more(stack, bucket):
    key = f"incoming/fail-{uuid.uuid4().hex}.txt"
    stack.client("s3").put_object(Bucket=bucket, Key=key, Body=b"x")

    tries = wait_until(lambda: len(e := events_for(stack, key)) == 3 and e, timeout=15, what="three tries")
    settle(stack)

    assert len(events_for(stack, key)) == 3  # then the event is dropped
    assert len({t.request_id for t in tries}) == 1  # retries of one event keep its request id
    delays = stack.runtime.async_retry_delays
    assert tries[1].started - tries[0].ended >= delays[0] - 0.1
    assert tries[2].started - tries[1].ended >= delays[1] - 0.1
