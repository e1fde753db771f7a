"""What the end-to-end tests share: waiting on jobs, reading the emulator's state and the SNS inbox."""

import json
import time

import httpx

from local.stack import LocalStack

TERMINAL = {"completed", "failed", "cancelled", "timed_out"}


def wait_for_status(api: httpx.Client, job_id: str, statuses=TERMINAL, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def job_record(stack: LocalStack, job_id: str) -> dict:
    """The job's item as stored in the emulator's DynamoDB table."""
    table = stack.session.resource("dynamodb", endpoint_url=stack.aws_endpoint).Table(
        stack.resources.physical["JobsTable"]
    )
    return table.get_item(Key={"id": job_id}, ConsistentRead=True)["Item"]


def xai_request_id(stack: LocalStack, job_id: str) -> str:
    return job_record(stack, job_id)["xai_request_id"]


class Inbox:
    """Everything SNS published, read from the SQS queue the local stack subscribes to the topic."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.messages: list[dict] = []

    def drain(self) -> None:
        sqs = self.stack.client("sqs")
        while True:
            reply = sqs.receive_message(
                QueueUrl=self.stack.inbox_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
            )
            batch = reply.get("Messages", [])
            if not batch:
                return
            for message in batch:
                attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
                self.messages.append({"attributes": attributes, "body": json.loads(message["Body"])})
                sqs.delete_message(QueueUrl=self.stack.inbox_url, ReceiptHandle=message["ReceiptHandle"])

    def for_job(self, job_id: str, *, expect: int = 1, timeout: float = 15) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            self.drain()
            found = [m for m in self.messages if m["body"]["job"]["id"] == job_id]
            if len(found) >= expect or time.time() > deadline:
                return found
            time.sleep(0.2)
