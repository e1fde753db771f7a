"""Real peers for the layer's unit tests: the xAI simulator, moto's server and a tiny HTTP peer.

Servers start once per session; function-scoped fixtures put them back to a clean state per test.
"""

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from local.aws_emulator import AwsEmulator
from local.xai_simulator import SimulatorConfig, XaiSimulator
from xjobs import batch_ingest
from xjobs.xai import UpstreamStatus, XaiClient

API_KEY = "sk-unit-test-key-0123456789"

SIMULATOR = SimulatorConfig(
    api_key=API_KEY,
    video_duration_median=0.6,
    video_duration_sigma=0.0,
    deferred_chat_duration=0.4,
    random_seed=7,
)


# -- the xAI simulator -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[XaiSimulator]:
    with XaiSimulator(SIMULATOR) as simulator:
        yield simulator


@pytest.fixture
def sim(simulator_server: XaiSimulator, request: pytest.FixtureRequest) -> Iterator[XaiSimulator]:
    """The session's simulator with an empty log; its configuration is restored after the test, and
    the test fails if a request the client sent or an answer the simulator gave broke xAI's contract."""
    simulator_server.reset()
    yield simulator_server
    deliberate = request.node.get_closest_marker("sends_invalid_requests") is not None
    problems = simulator_server.violations(requests=not deliberate)
    simulator_server.update(**dataclasses.asdict(SIMULATOR))
    simulator_server.reset()
    assert not problems, "xAI contract violations:\n" + "\n".join(problems)


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def make_client() -> Iterator[Callable[..., XaiClient]]:
    """Clients with fast backoff (retry tests take milliseconds), closed after the test."""
    made: list[XaiClient] = []

    def make(base_url: str, api_key: str = API_KEY, **options) -> XaiClient:
        settings = {"timeout": 3.0, "connect_timeout": 1.0, "backoff_base": 0.01, "backoff_cap": 0.05}
        made.append(XaiClient(base_url, api_key, **(settings | options)))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def xai(sim: XaiSimulator, make_client) -> XaiClient:
    return make_client(sim.base_url)


@pytest.fixture
def settle() -> Callable[..., UpstreamStatus]:
    """Poll an upstream request until it is no longer pending."""

    def wait(client: XaiClient, kind: str, request_id: str, timeout: float = 5.0) -> UpstreamStatus:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = client.status(kind, request_id)
            if status.state != "pending":
                return status
            time.sleep(0.05)
        raise AssertionError(f"{kind} {request_id} still pending after {timeout} s")

    return wait


# -- a tiny HTTP peer (webhook receiver, or an upstream that answers oddly) -------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpPeer:
    """Records every request and answers each with `status`, `headers` and `body`."""

    url: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"
    received: list[Received] = field(default_factory=list)

    def reset(self) -> None:
        self.status, self.headers, self.body = 200, {}, b"{}"
        self.received.clear()


def _peer_handler(peer: HttpPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait for an ACK

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            peer.received.append(Received(self.command, self.path, dict(self.headers.items()), body))
            self.send_response(peer.status)
            for name, value in peer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(peer.body)))
            self.end_headers()
            self.wfile.write(peer.body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def http_peer_server() -> Iterator[HttpPeer]:
    peer = HttpPeer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _peer_handler(peer))
    server.daemon_threads = True
    peer.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield peer
    server.shutdown()
    server.server_close()


@pytest.fixture
def http_peer(http_peer_server: HttpPeer) -> HttpPeer:
    http_peer_server.reset()
    return http_peer_server


# -- AWS on moto's server --------------------------------------------------------------------------

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def aws_emulator() -> Iterator[AwsEmulator]:
    server = AwsEmulator(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def aws_endpoint(aws_emulator: AwsEmulator) -> Iterator[str]:
    """moto's server on loopback; the environment points every boto3 client (and xjobs.aws) at it."""
    server = aws_emulator
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    names = [*_AWS_ENV, "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(_AWS_ENV | {"AWS_ENDPOINT_URL": endpoint})
    yield endpoint
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def dynamodb(aws_endpoint: str):
    return boto3.client("dynamodb", endpoint_url=aws_endpoint)


def _create_table(dynamodb, prefix: str, hash_key: tuple[str, str], range_key=None, by_tenant=False) -> str:
    """A pay-per-request table keyed by (name, type) pairs, with the template's by-tenant index when
    asked; returns its name."""
    keys = [hash_key] + ([range_key] if range_key else [])
    attributes = dict(keys)
    spec = {"KeySchema": [{"AttributeName": name, "KeyType": "HASH"} for name, _ in keys[:1]]}
    spec["KeySchema"] += [{"AttributeName": name, "KeyType": "RANGE"} for name, _ in keys[1:]]
    if by_tenant:
        attributes["tenant"] = "S"
        spec["GlobalSecondaryIndexes"] = [
            {
                "IndexName": "by-tenant",
                "KeySchema": [
                    {"AttributeName": "tenant", "KeyType": "HASH"},
                    {"AttributeName": "id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ]
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t in attributes.items()],
        **spec,
    )
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    return name


@pytest.fixture(scope="session")
def jobs_table(dynamodb) -> str:
    """A table shaped like the template's JobsTable; returns its name."""
    return _create_table(dynamodb, "jobs", ("id", "S"), by_tenant=True)


@pytest.fixture(scope="session")
def limits_table(dynamodb) -> str:
    """A table shaped like the template's LimitsTable; returns its name."""
    return _create_table(dynamodb, "limits", ("id", "S"))


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses (tenants, limiter scopes), so session tables need no cleanup."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


# -- chat batches: the template's batch resources on moto, and the settings that name them ----------


@pytest.fixture(scope="session")
def batches_table(dynamodb) -> str:
    """A table shaped like the template's BatchesTable; returns its name."""
    return _create_table(dynamodb, "batches", ("id", "S"), by_tenant=True)


@pytest.fixture(scope="session")
def batch_items_table(dynamodb) -> str:
    """A table shaped like the template's BatchItemsTable; returns its name."""
    return _create_table(dynamodb, "batch-items", ("batch_id", "S"), range_key=("line", "N"))


@pytest.fixture(scope="session")
def data_bucket(aws_endpoint: str) -> str:
    name = f"data-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=aws_endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class Notifications:
    """An SNS topic with an SQS queue subscribed to it, so tests can read what was published."""

    topic_arn: str
    queue_url: str
    sqs: object

    def read(self) -> list[dict]:
        """Every notice published since the last read: {"message": dict, "attributes": {name: value}}."""
        notices = []
        while True:
            reply = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10)
            if not reply.get("Messages"):
                return notices
            for message in reply["Messages"]:
                envelope = json.loads(message["Body"])
                attributes = {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()}
                notices.append({"message": json.loads(envelope["Message"]), "attributes": attributes})
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture(scope="session")
def notifications(aws_endpoint: str) -> Notifications:
    sns = boto3.client("sns", endpoint_url=aws_endpoint)
    sqs = boto3.client("sqs", endpoint_url=aws_endpoint)
    topic_arn = sns.create_topic(Name=f"notices-{uuid.uuid4().hex[:8]}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"notices-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn["QueueArn"])
    return Notifications(topic_arn, queue_url, sqs)


@pytest.fixture(scope="session")
def xai_secret(aws_endpoint: str) -> str:
    """A Secrets Manager secret holding the simulator's API key; returns its name."""
    name = f"xai-key-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager", endpoint_url=aws_endpoint).create_secret(Name=name, SecretString=API_KEY)
    return name


@pytest.fixture(scope="session")
def stand_in_function(aws_endpoint: str) -> Callable[[str], str]:
    """Functions in moto's docker-free Lambda: invoking one succeeds and runs nothing (the tests run
    the handler's work themselves). Makes a function of the given name; returns its ARN."""
    import httpx

    httpx.post(f"{aws_endpoint}/moto-api/config", json={"lambda": {"use_docker": False}}).raise_for_status()
    role = boto3.client("iam", endpoint_url=aws_endpoint).create_role(
        RoleName=f"functions-{uuid.uuid4().hex[:8]}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]

    def make(name: str) -> str:
        return boto3.client("lambda", endpoint_url=aws_endpoint).create_function(
            FunctionName=name,
            Runtime="python3.12",
            Role=role,
            Handler="app.handler",
            Code={"ZipFile": _empty_zip()},
        )["FunctionArn"]

    return make


@pytest.fixture(scope="session")
def finalize_function(stand_in_function) -> str:
    """Stands in for BatchFinalizeFunction (tests call batch_finalize.finalize themselves); its name."""
    name = f"finalize-{uuid.uuid4().hex[:8]}"
    stand_in_function(name)
    return name


def _empty_zip() -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "")
    return buffer.getvalue()


@pytest.fixture
def work_queue(aws_endpoint: str) -> str:
    """A fresh queue per test, with the template's WorkQueue visibility timeout; returns its URL."""
    sqs = boto3.client("sqs", endpoint_url=aws_endpoint)
    return sqs.create_queue(
        QueueName=f"work-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "720"}
    )["QueueUrl"]


@pytest.fixture
def batch_settings(
    monkeypatch,
    sim: XaiSimulator,
    dynamodb,
    jobs_table,
    batches_table,
    batch_items_table,
    data_bucket,
    notifications,
    xai_secret,
    finalize_function,
    work_queue,
):
    """The environment xjobs.settings reads, naming the batch resources above and the simulator.

    Each test gets its own limits table: the chat limiter's scope is fixed, so windows one test fills
    (limiter.block) must not hold back the next. What the workers learned from xAI's rate-limit
    headers is forgotten before and after each test, as a new container would.
    """
    from aws_lambda_powertools import Logger

    from xjobs import batch_ingest, settings, upstream

    limits = _create_table(dynamodb, "limits", ("id", "S"))
    environment = {
        "JOBS_TABLE": jobs_table,
        "IDEMPOTENCY_TABLE": "unused-idempotency",
        "LIMITS_TABLE": limits,
        "DATA_BUCKET": data_bucket,
        "TOPIC_ARN": notifications.topic_arn,
        "XAI_BASE_URL": sim.base_url,
        "XAI_API_KEY_SECRET": xai_secret,
        "CHAT_REQUESTS_PER_MINUTE": "6000",
        "CHAT_TOKENS_PER_MINUTE": "10000000",
        "BATCHES_TABLE": batches_table,
        "BATCH_ITEMS_TABLE": batch_items_table,
        "WORK_QUEUE_URL": work_queue,
        "BATCH_FINALIZE_FUNCTION": finalize_function,
        "BATCH_COMPLETION_WINDOW_SECONDS": "86400",
        "BATCH_MAX_ATTEMPTS": "3",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # The functions' app.py makes the parent logger the layer's child loggers log (and append keys) through.
    Logger(service=batch_ingest.logger.service)
    settings.get_settings.cache_clear()
    upstream._chat_rate.cache_clear()
    upstream._account.cache_clear()
    upstream._fair_share.cache_clear()
    yield settings.get_settings()
    settings.get_settings.cache_clear()
    upstream._chat_rate.cache_clear()
    upstream._account.cache_clear()
    upstream._fair_share.cache_clear()


@dataclass
class LambdaContext:
    """The part of Lambda's context object the batch functions read."""

    remaining_ms: int = 900_000
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ingest"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def deliveries(queue_url: str) -> list[dict]:
    """Every message the queue delivers now (each stays in flight for the queue's 720 s)."""
    sqs = boto3.client("sqs")
    found = []
    while True:
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"])
        if not reply.get("Messages"):
            return sorted(found, key=lambda m: json.loads(m["Body"])["line"])
        found.extend(reply["Messages"])


@pytest.fixture
def start_batch(batch_settings, data_bucket, work_queue):
    """Ingest these lines as a batch; returns (batch id, the work queue's deliveries)."""

    def start(*lines: dict) -> tuple[str, list[dict]]:
        key = f"{batch_ingest.INCOMING_PREFIX}{uuid.uuid4().hex}.jsonl"
        content = "".join(json.dumps(line) + "\n" for line in lines).encode()
        boto3.client("s3").put_object(Bucket=data_bucket, Key=key, Body=content)
        batch_id = batch_ingest.open_batch(data_bucket, key)
        batch_ingest.ingest(batch_id, LambdaContext())
        return batch_id, deliveries(work_queue)

    return start
