"""Event sources of the template's functions, run as the Lambda and S3 services run them.

SQS event source mappings. moto's own mapping is not used (it runs inside SendMessage, one message per
invocation, and ignores batching, concurrency and partial failures). Each enabled SQS mapping of the
template gets a poller that does what Lambda's does:
- long-polls ReceiveMessage (at most 10 messages a call, every system and message attribute) and gathers
  up to BatchSize messages, or what has come once MaximumBatchingWindowInSeconds has passed since the
  first one (window 0: what one receive returned);
- invokes the function synchronously with the event Lambda sends (`Records` of `aws:sqs` records);
- runs at most ScalingConfig.MaximumConcurrency batches at once (unset: DEFAULT_MAXIMUM_CONCURRENCY;
  AWS would scale to 1,000) and receives only when it may start one more;
- after a successful invocation deletes the batch with DeleteMessageBatch, except, with the
  ReportBatchItemFailures response type, the messages named in `batchItemFailures`; a response naming a
  message not in the batch, or malformed, fails the whole batch, as in AWS;
- after an error or a timeout deletes nothing: the messages come back once their visibility timeout
  ends, and SQS (moto, at receive time) moves a message received maxReceiveCount times to the queue's
  dead-letter queue, which may have a mapping of its own;
- retries a throttled invocation until the batch's visibility timeout has passed, as Lambda does.

Fair queues. A standard queue's messages with a MessageGroupId (a tenant) are received as SQS fair queues
deliver them: a tenant with a large share of the messages in flight waits while the others' messages go
first (_fair_queues).

S3 notifications. local/cloudformation.py sets each bucket's NotificationConfiguration in moto, and moto
finds the configurations an object event matches (event type, prefix and suffix rules) in PutObject
(presigned PUTs included), POST uploads, CopyObject and CompleteMultipartUpload. patch_moto() makes the
rest as S3 does it: the event's shape and key encoding (s3_event), filter rules matched against the key
as encoded in the event, and a multipart upload that notifies ObjectCreated:CompleteMultipartUpload only
(moto also sends ObjectCreated:Put and ObjectTagging:Put). The local runtime invokes the function
asynchronously (retried twice on error), so the S3 request never waits for it.

Schedules. A scheduled EventBridge rule of the template (SAM's Schedule event) gets a thread that invokes
its target functions asynchronously, with EventBridge's "Scheduled Event", every rate(N minutes|hours|
days) and, locally only (EventBridge's finest rate is a minute), rate(N seconds). cron() is not run.

On-failure destinations. deliver_failure sends the record of an asynchronous invocation that failed every
attempt to its destination (an SQS queue, an SNS topic or a function), as Lambda does.
"""

import base64
import functools
import json
import logging
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import quote_plus

from .cloudformation import ACCOUNT, TemplateError
from .runtime import SYNC_PAYLOAD_LIMIT, FunctionError, LambdaRuntime

DEFAULT_MAXIMUM_CONCURRENCY = 5  # concurrent batches of a mapping without ScalingConfig.MaximumConcurrency
# Lambda long-polls for 20 s; 1 s here lets stop() return within about a second. A receive still returns
# as soon as a message arrives.
LONG_POLL_SECONDS = 1
RECEIVE_MAX = 10  # ReceiveMessage's MaxNumberOfMessages limit
BATCH_ENTRIES_MAX = 10  # the entries of one DeleteMessageBatch or ChangeMessageVisibilityBatch
THROTTLE_BACKOFF = 0.2

log = logging.getLogger("xjobs.local.event_sources")


class SqsPoller:
    """One SQS event source mapping: a thread that gathers batches, and a thread per batch in flight."""

    def __init__(self, mapping: dict, runtime: LambdaRuntime, sqs):
        self.name = mapping.get("LogicalId", mapping["EventSourceArn"])
        self.function = mapping["FunctionName"]
        self.queue_arn = mapping["EventSourceArn"]
        self.batch_size = int(mapping.get("BatchSize", 10))
        self.window = float(mapping.get("MaximumBatchingWindowInSeconds", 0))
        scaling = mapping.get("ScalingConfig") or {}
        self.maximum_concurrency = int(scaling.get("MaximumConcurrency", DEFAULT_MAXIMUM_CONCURRENCY))
        self.report_item_failures = "ReportBatchItemFailures" in (mapping.get("FunctionResponseTypes") or [])
        self.runtime = runtime
        self.sqs = sqs
        _, _, _, self.region, account, queue_name = self.queue_arn.split(":")
        self.queue_url = sqs.get_queue_url(QueueName=queue_name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        self.visibility_timeout = int(
            sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["VisibilityTimeout"])[
                "Attributes"
            ]["VisibilityTimeout"]
        )
        self._slots = threading.Semaphore(self.maximum_concurrency)
        self._stop = threading.Event()
        self._batches: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._poll, name=f"esm-{self.name}", daemon=True)

    def start(self) -> "SqsPoller":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        """Waits for the poller, and briefly for the batches in flight (a handler cannot be cut short)."""
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        for batch in list(self._batches):
            batch.join(max(0.0, deadline - time.monotonic()))

    # ---- receiving ---------------------------------------------------------------------------
    def _poll(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=LONG_POLL_SECONDS):
                continue  # every batch slot is busy
            try:
                messages = self._fit(self._gather())
            except Exception:
                self._slots.release()
                if not self._stop.is_set():  # when stopping, the emulator may already be gone
                    log.exception("%s: ReceiveMessage failed", self.name)
                    self._stop.wait(1)
                continue
            if not messages or self._stop.is_set():
                self._slots.release()  # messages received while stopping come back after their timeout
                continue
            batch = threading.Thread(
                target=self._deliver, args=(messages,), name=f"esm-{self.name}-batch", daemon=True
            )
            self._batches = [b for b in self._batches if b.is_alive()] + [batch]
            batch.start()

    def _gather(self) -> list[dict]:
        messages: list[dict] = []
        deadline = None
        while len(messages) < self.batch_size and not self._stop.is_set():
            if deadline is None:
                wait = LONG_POLL_SECONDS
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = int(remaining)  # whole seconds; under one second, short polls
            received = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=min(RECEIVE_MAX, self.batch_size - len(messages)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages += received
            if deadline is None:
                if not received or self.window == 0:
                    break
                deadline = time.monotonic() + self.window
            elif not received and wait == 0:
                self._stop.wait(min(0.05, remaining))
        return messages

    def _fit(self, messages: list[dict]) -> list[dict]:
        """As many of the messages as fit in one invocation's 6 MB event; the others are made visible
        again at once, for a later batch (they were received, so their receive count has grown)."""
        size, fitting = len('{"Records": []}'), 0
        for message in messages:
            size += len(json.dumps(self._record(message)).encode()) + 2
            if size > SYNC_PAYLOAD_LIMIT and fitting:
                break
            fitting += 1
        overflow = messages[fitting:]
        for start in range(0, len(overflow), BATCH_ENTRIES_MAX):
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(overflow[start : start + BATCH_ENTRIES_MAX])
                ],
            )
        return messages[:fitting]

    # ---- invoking ----------------------------------------------------------------------------
    def _deliver(self, messages: list[dict]) -> None:
        try:
            keep = self._invoke(messages)
            if keep is not None:
                self._delete([m for m in messages if m["MessageId"] not in keep])
        except Exception:
            if not self._stop.is_set():
                log.exception("%s: a batch could not be completed", self.name)
        finally:
            self._slots.release()

    def _invoke(self, messages: list[dict]) -> set[str] | None:
        """The ids of the messages to leave in the queue, or None when the whole batch failed."""
        event = {"Records": [self._record(m) for m in messages]}
        give_up = time.monotonic() + self.visibility_timeout
        while True:
            try:
                response = self.runtime.invoke(self.function, event)
            except FunctionError as exc:
                throttled = exc.error_type == "TooManyRequestsException"
                if throttled and time.monotonic() < give_up and not self._stop.is_set():
                    self._stop.wait(THROTTLE_BACKOFF)
                    continue
                log.info("%s: batch of %d failed: %s", self.name, len(messages), exc)
                return None
            keep = self._item_failures(response, messages)
            if keep is None:
                log.warning(
                    "%s: invalid batchItemFailures response %r; the batch failed", self.name, response
                )
            return keep

    def _item_failures(self, response, messages: list[dict]) -> set[str] | None:
        """What Lambda makes of a successful invocation's response. Without ReportBatchItemFailures every
        message succeeded. With it, no response, an empty one or an empty (or null) batchItemFailures is
        success; each item must name a message of the batch by its itemIdentifier, else the batch failed."""
        if not self.report_item_failures or response is None:
            return set()
        if not isinstance(response, dict):
            return None
        items = response.get("batchItemFailures")
        if items is None or items == []:
            return set()
        if not isinstance(items, list):
            return None
        ids = {m["MessageId"] for m in messages}
        failed = set()
        for item in items:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if not isinstance(identifier, str) or identifier not in ids:
                return None
            failed.add(identifier)
        return failed

    def _delete(self, messages: list[dict]) -> None:
        for start in range(0, len(messages), BATCH_ENTRIES_MAX):
            chunk = messages[start : start + BATCH_ENTRIES_MAX]
            reply = self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            for failure in reply.get("Failed", []):
                log.warning("%s: DeleteMessageBatch failed: %s", self.name, failure)

    def _record(self, message: dict) -> dict:
        """A received message as Lambda's SQS event has it."""
        record = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {
                name: _lambda_message_attribute(value)
                for name, value in message.get("MessageAttributes", {}).items()
            },
        }
        if "MD5OfMessageAttributes" in message:
            record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
        record.update(
            md5OfBody=message["MD5OfBody"],
            eventSource="aws:sqs",
            eventSourceARN=self.queue_arn,
            awsRegion=self.region,
        )
        return record


def _lambda_message_attribute(value: dict) -> dict:
    """A message attribute as Lambda delivers it: camelCase, binary as base64, the (unused) list values."""
    shaped: dict = {}
    if "StringValue" in value:
        shaped["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        shaped["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    shaped.update(stringListValues=[], binaryListValues=[], dataType=value["DataType"])
    return shaped


_RATE = re.compile(r"^rate\((\d+) (second|minute|hour|day)s?\)$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float:
    """The period of a rate() schedule expression, in seconds."""
    match = _RATE.match(expression.strip())
    if not match or int(match.group(1)) < 1:
        raise TemplateError(f"the local stack runs rate(N unit) schedules only, not {expression!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class Schedule:
    """A scheduled rule: invokes its functions asynchronously once per period, the first time one period
    after the stack started (as a new rule first fires)."""

    def __init__(self, rule: dict, runtime: LambdaRuntime):
        self.rule = rule
        self.period = rate_seconds(rule["ScheduleExpression"])
        self.runtime = runtime
        self.fired = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule-{rule['LogicalId']}", daemon=True)

    def start(self) -> "Schedule":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.fired += 1
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": ACCOUNT,
                "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self.runtime_region,
                "resources": [self.rule["Arn"]],
                "detail": {},
            }
            for function in self.rule["Functions"]:
                try:
                    self.runtime.invoke_async(function, event)
                except FunctionError as exc:
                    log.warning("%s: %s not invoked: %s", self.rule["LogicalId"], function, exc)

    @property
    def runtime_region(self) -> str:
        return self.rule["Arn"].split(":")[3]


def deliver_failure(session, endpoint: str, runtime: LambdaRuntime, destination: str, record: dict) -> None:
    """An on-failure destination gets the record of an event that failed every attempt."""
    service = destination.split(":")[2]
    body = json.dumps(record)
    if service == "sqs":
        _, _, _, region, account, name = destination.split(":")
        sqs = session.client("sqs", endpoint_url=endpoint)
        url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody=body)
    elif service == "sns":
        session.client("sns", endpoint_url=endpoint).publish(TopicArn=destination, Message=body)
    elif service == "lambda":
        runtime.invoke_async(destination, record)
    else:
        raise TemplateError(f"the local stack cannot deliver to the destination {destination}")


class EventSources:
    """The stack's pollers (one per enabled SQS event source mapping) and schedules."""

    def __init__(self, mappings: list[dict], runtime: LambdaRuntime, sqs, schedules: list[dict] = ()):
        self.pollers: list[SqsPoller] = []
        for mapping in mappings:
            if not str(mapping.get("EventSourceArn", "")).startswith("arn:aws:sqs:"):
                raise TemplateError(f"{mapping.get('LogicalId')}: the local stack polls only SQS queues")
            if str(mapping.get("Enabled", True)).lower() != "false":
                self.pollers.append(SqsPoller(mapping, runtime, sqs))
        self.schedules = [Schedule(rule, runtime) for rule in schedules]

    def start(self) -> "EventSources":
        for source in [*self.pollers, *self.schedules]:
            source.start()
        return self

    def stop(self, timeout: float = LONG_POLL_SECONDS + 4) -> None:
        for source in [*self.schedules, *self.pollers]:
            source.stop()
        deadline = time.monotonic() + timeout
        for source in [*self.schedules, *self.pollers]:
            source.join(max(0.0, deadline - time.monotonic()))


# ---- S3 events ---------------------------------------------------------------------------------
def s3_event_key(key: str) -> str:
    """An object key as S3 events carry it: URL-encoded, space as "+", "/" kept (moto encodes "/" too)."""
    return quote_plus(key, safe="/")


_sequencer_lock = threading.Lock()
_last_sequencer = 0


def _sequencer() -> str:
    """A hex value that grows with each event, as S3's sequencer does for the events of one key."""
    global _last_sequencer
    with _sequencer_lock:
        _last_sequencer = max(_last_sequencer + 1, time.time_ns())
        return f"{_last_sequencer:018X}"


def s3_event(event_name: str, bucket, key, notification_id: str) -> dict:
    """The event S3 sends to a notification's target, for moto's bucket and key objects."""
    name = event_name[len("s3:") :]
    s3_object: dict = {"key": s3_event_key(key.name)}
    if not name.startswith("ObjectRemoved"):
        s3_object.update(size=key.size, eTag=key.etag.strip('"'))
    if getattr(bucket, "is_versioned", False) and getattr(key, "version_id", None):
        s3_object["versionId"] = key.version_id
    s3_object["sequencer"] = _sequencer()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    request_id = f"{time.time_ns():016X}"[-16:]
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": bucket.region_name,
                "eventTime": now,
                "eventName": name,
                "userIdentity": {"principalId": f"AWS:{ACCOUNT}"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": request_id, "x-amz-id-2": request_id},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": notification_id,
                    "bucket": {
                        "name": bucket.name,
                        "ownerIdentity": {"principalId": ACCOUNT},
                        "arn": bucket.arn,
                    },
                    "object": s3_object,
                },
            }
        ]
    }


_patched = False


def patch_moto() -> None:
    """S3 events shaped and filtered as S3 does, and SQS queues safe for concurrent use (idempotent)."""
    global _patched
    if _patched:
        return
    _patched = True
    _patch_s3_notifications()
    _serialize_sqs_queue_updates()
    _speed_up_sqs_scans()
    _fair_queues()


# SQS fair queues: a tenant (MessageGroupId) is a noisy neighbour while it holds more than this share of
# a standard queue's messages in flight, and at least this many.
NOISY_SHARE, NOISY_MIN_IN_FLIGHT = 0.10, 30


def _fair_queues() -> None:
    """Standard queues deliver as SQS fair queues do (moto delivers in the order sent): while a message
    group (a tenant) holds more than 10% of the queue's messages in flight, and at least 30, the other
    tenants' messages are received first; among noisy tenants, the one with the fewest in flight first.
    A message without a MessageGroupId is a tenant of its own. (SQS also counts a tenant's share of the
    consumers' processing time; this emulation counts messages in flight only.)"""
    from collections import Counter

    from moto.sqs.models import Queue

    in_order = Queue.messages

    def messages(self):
        visible = in_order.fget(self)
        if self.fifo_queue or not visible:
            return visible
        now = time.time() * 1000
        in_flight = Counter(m.group_id for m in self._pending_messages if m.group_id and now < m.visible_at)
        total = sum(in_flight.values())
        noisy = {
            group: count
            for group, count in in_flight.items()
            if count > NOISY_SHARE * total and count >= NOISY_MIN_IN_FLIGHT
        }
        if not noisy:
            return visible
        return sorted(visible, key=lambda m: (m.group_id in noisy, noisy.get(m.group_id, 0)))

    Queue.messages = property(messages)


def _patch_s3_notifications() -> None:
    from moto.s3 import notifications
    from moto.s3.models import Notification, S3Backend

    complete = notifications.S3NotificationEvent.OBJECT_CREATED_COMPLETE_MULTIPART_UPLOAD_EVENT
    completing = threading.local()
    send_event = notifications.send_event
    complete_multipart_upload = S3Backend.complete_multipart_upload
    key_matches = Notification._key_matches

    def send_event_as_s3(account_id, event_name, bucket, key):
        if getattr(completing, "active", False) and event_name != complete:
            return  # moto completes an upload with a PutObject (and tagging) that S3 does not report
        send_event(account_id, event_name, bucket, key)

    @functools.wraps(complete_multipart_upload)
    def complete_upload(self, *args, **kwargs):
        completing.active = True
        try:
            return complete_multipart_upload(self, *args, **kwargs)
        finally:
            completing.active = False

    notifications._get_s3_event = s3_event
    notifications.send_event = send_event_as_s3
    S3Backend.complete_multipart_upload = complete_upload
    # S3 matches prefix and suffix rules against the key as encoded in the event ("my+dir/", not "my dir/").
    Notification._key_matches = lambda self, key_name: key_matches(self, s3_event_key(key_name))


def _serialize_sqs_queue_updates() -> None:
    """moto rebuilds a queue's message list in DeleteMessage and moves messages to the dead-letter queue
    in ReceiveMessage without the lock SendMessage takes, so concurrent senders, pollers and deleters (the
    pollers' batches run in parallel) could lose or duplicate a message. Receive, delete and visibility
    changes take the queue's lock too; a long poll releases it while it waits."""
    from moto.sqs.models import Queue, SQSBackend

    def locked(method, queue_of):
        @functools.wraps(method)
        def run(self, *args, **kwargs):
            with queue_of(self, *args, **kwargs)._messages_lock:
                return method(self, *args, **kwargs)

        return run

    def by_name(backend, queue_name, *args, **kwargs):
        return backend.get_queue(queue_name)

    Queue.delete_message = locked(Queue.delete_message, lambda queue, *args, **kwargs: queue)
    SQSBackend.receive_message = locked(SQSBackend.receive_message, by_name)
    SQSBackend.change_message_visibility = locked(SQSBackend.change_message_visibility, by_name)


def _speed_up_sqs_scans() -> None:
    """moto scans every message of a queue several times per message received (visibility, delay and
    the retention check, which computes every queue attribute), reading the clock through datetime
    arithmetic each time: a receive from a queue of 2,000 messages took about a second, and a batch of
    10,000 requests never drained. The same checks, with the clock read as time.time()."""
    from moto.sqs.models import Message, SQSBackend

    Message.visible = property(lambda message: time.time() * 1000 > message.visible_at)
    Message.delayed = property(lambda message: time.time() * 1000 < message.delayed_until)

    def is_message_valid_based_on_retention_period(self, queue_name: str, message) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > time.time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
