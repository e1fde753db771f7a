"""Logs and metrics: the one Logger every function and module writes through, and CloudWatch metrics as
Embedded Metric Format (EMF) lines on stdout, which CloudWatch turns into metrics with no API call.

Every metric is in the ``xjobs`` namespace and is published twice from one EMF line: with the
dimension ``service`` alone (what alarms watch) and, when it has any, with its own dimensions too
(what the dashboard breaks down), e.g. ``JobsFinished`` by ``Kind`` and ``Status``.

A metric goes out when it happens, in its own EMF line, instead of through Powertools' ``Metrics``
object: that object keeps one set of dimensions per flush in class-level state shared by every thread,
while a data point here has dimensions of its own and the batch worker records from many threads.

Metrics (all Count unless noted):
- JobsSubmitted {Kind}; JobsFinished {Kind, Status}
- BatchesCreated; BatchesFinished {Status}; BatchLines {Outcome} (a result line: ``ok`` or its error code)
- XaiCalls {Operation, Outcome} and XaiLatency (Milliseconds) {Operation, Outcome}; a 429 is Outcome
  ``rate_limited``
- LimiterWaits {Scope}: a request that had to wait for the shared rate limiter; LimiterWaitSeconds
- NoticesSent {Channel, Event}; NoticeFailures {Channel} (a webhook that will be retried)
- StalledWork {Kind, Action}: what the sweeper found stuck and ``restarted`` or ``failed``
- AccountBlocked: xAI refused the account itself (no credits, suspended key); only ``service``
"""

import time
from contextlib import contextmanager

from aws_lambda_powertools import Logger

NAMESPACE = "xjobs"
SERVICE = "xjobs"

# The one Logger of the process: the handlers decorate with it, the modules import it.
logger = Logger(service=SERVICE)


def metric(name: str, value: float = 1, unit: str = "Count", **dimensions: str) -> None:
    """One data point of a metric, as one EMF line."""
    emit({name: (value, unit)}, **dimensions)


def emit(values: dict[str, tuple[float, str]], **dimensions: str) -> None:
    """Several metrics of the same event (e.g. a call and its latency) in one EMF line."""
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

    line = AmazonCloudWatchEMFProvider(namespace=NAMESPACE, service=SERVICE)
    for name, (value, unit) in values.items():
        line.add_metric(name=name, unit=unit, value=value)
    if dimensions:
        line.add_dimensions(service=SERVICE, **{k: str(v) for k, v in dimensions.items()})
    line.flush_metrics()


@contextmanager
def timed(operation: str):
    """Time an xAI call: XaiCalls and XaiLatency by operation and outcome. The block sets the outcome
    with ``outcome[0] = ...``; left as it is, an exception is ``error`` and a normal end ``ok``."""
    outcome = [None]
    started = time.perf_counter()
    try:
        yield outcome
    except BaseException:
        outcome[0] = outcome[0] or "error"
        raise
    finally:
        emit(
            {
                "XaiCalls": (1, "Count"),
                "XaiLatency": ((time.perf_counter() - started) * 1000, "Milliseconds"),
            },
            Operation=operation,
            Outcome=outcome[0] or "ok",
        )


def account_blocked(reason: str) -> None:
    """xAI refuses this account (no credits left, a revoked key): every job and batch will fail until an
    operator acts. One log line and the AccountBlocked metric, which the AccountBlocked alarm watches."""
    logger.error("xAI blocked the account", extra={"reason": reason})
    metric("AccountBlocked")
