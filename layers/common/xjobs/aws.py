"""AWS clients: created once per container, on first use, with explicit timeouts and retries.

boto3 (with botocore's config machinery, ~300 ms) is imported on first use rather than at module
import, so handlers that import this module do not pay for it during their cold start's import.
"""

import logging
import threading
from functools import cache


def quiet_botocore() -> None:
    """botocore at DEBUG logs whole requests and responses (the secrets Secrets Manager returns among
    them): keep it at INFO or above whatever LogLevel or the root logger says."""
    for name in ("botocore", "boto3", "urllib3"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:  # it would follow the root logger down to DEBUG
            logger.setLevel(logging.WARNING)
        elif logger.level < logging.INFO:
            logger.setLevel(logging.INFO)


quiet_botocore()


@cache
def _config():
    from botocore.config import Config

    quiet_botocore()

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


@cache
def publisher():
    """SNS for announcements: one attempt within 7 s, no SDK retry. A retry after a timeout would
    publish a second time if the first had landed; the announcer's lease and the state machine's
    retry decide instead, and the announcer always ends well inside its lease."""
    import boto3
    from botocore.config import Config

    quiet_botocore()
    config = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 1})
    return boto3.session.Session().client("sns", config=config)


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
