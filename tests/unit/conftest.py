"""Real peers for the layer's unit tests: the xAI simulator, moto's server and a tiny HTTP peer.

Servers start once per session; function-scoped fixtures put them back to a clean state per test.
"""

import dataclasses
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
def sim(simulator_server: XaiSimulator) -> Iterator[XaiSimulator]:
    """The session's simulator with an empty log; its configuration is restored after the test."""
    simulator_server.reset()
    yield simulator_server
    simulator_server.update(**dataclasses.asdict(SIMULATOR))
    simulator_server.reset()


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
def aws_endpoint() -> Iterator[str]:
    """moto's server on loopback; the environment points every boto3 client (and xjobs.aws) at it."""
    server = AwsEmulator(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    names = [*_AWS_ENV, "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(_AWS_ENV | {"AWS_ENDPOINT_URL": endpoint})
    yield endpoint
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def dynamodb(aws_endpoint: str):
    return boto3.client("dynamodb", endpoint_url=aws_endpoint)


@pytest.fixture(scope="session")
def jobs_table(dynamodb) -> str:
    """A table shaped like the template's JobsTable; returns its name."""
    name = f"jobs-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "id", "AttributeType": "S"},
            {"AttributeName": "tenant", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-tenant",
                "KeySchema": [
                    {"AttributeName": "tenant", "KeyType": "HASH"},
                    {"AttributeName": "id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    )
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    return name


@pytest.fixture(scope="session")
def limits_table(dynamodb) -> str:
    """A table shaped like the template's LimitsTable; returns its name."""
    name = f"limits-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    return name


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses (tenants, limiter scopes), so session tables need no cleanup."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"
