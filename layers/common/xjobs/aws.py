"""AWS clients: created once per container, on first use, with explicit timeouts and retries.

boto3 (with botocore's config machinery, ~300 ms) is imported on first use rather than at module
import, so handlers that import this module do not pay for it during their cold start's import.
"""

import threading
from functools import cache


@cache
def _config():
    from botocore.config import Config

    return Config(
        connect_timeout=3,
        read_timeout=10,
        retries={"mode": "standard", "max_attempts": 4},
        max_pool_connections=50,
    )


@cache
def client(service: str):
    import boto3

    config = _config()
    if service == "s3":
        from botocore.config import Config

        # botocore presigns S3 URLs with SigV2 by default, which buckets created since 2020 refuse.
        config = config.merge(Config(signature_version="s3v4"))
    return boto3.session.Session().client(service, config=config)


_local = threading.local()
_session_lock = threading.Lock()


@cache
def _session():
    import boto3

    return boto3.session.Session()


def table(name: str):
    # boto3 resources are not thread-safe: one per thread (the batch worker runs requests in threads).
    # They come from one shared session, made under a lock (a session is not thread-safe either): a new
    # session per resource would load the service models again, ~130 ms of CPU per thread and table.
    tables = _local.__dict__.setdefault("tables", {})
    if name not in tables:
        with _session_lock:
            tables[name] = _session().resource("dynamodb", config=_config()).Table(name)
    return tables[name]
