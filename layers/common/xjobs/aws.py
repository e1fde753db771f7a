"""AWS clients: created once per container, on first use, with explicit timeouts and retries."""

import threading
from functools import cache

import boto3
from botocore.config import Config

_CONFIG = Config(
    connect_timeout=3,
    read_timeout=10,
    retries={"mode": "standard", "max_attempts": 4},
    max_pool_connections=50,
)


@cache
def client(service: str):
    return boto3.session.Session().client(service, config=_CONFIG)


_local = threading.local()


def table(name: str):
    # boto3 resources are not thread-safe: one per thread (a Lambda environment has one thread).
    tables = _local.__dict__.setdefault("tables", {})
    if name not in tables:
        tables[name] = boto3.session.Session().resource("dynamodb", config=_CONFIG).Table(name)
    return tables[name]
