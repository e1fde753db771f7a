"""Cost per unit of work: AWS list prices (bench/prices.json) applied to what a benchmark counted on the
local stack, beside what xAI charges for the same work.

What is counted, by Meter, between its creation and counts():
- Lambda: invocations and billed time of each function (the local runtime's InvocationStats: init plus
  handler time), times the function's memory from the template. All functions run in one Python
  process here, so a handler's time includes waiting for the GIL: under load it overstates Lambda's.
- Step Functions (Standard): state transitions, from the history of every execution started since:
  each state entered, plus each retry of a task.
- DynamoDB on-demand read and write request units, and SQS, SNS, S3 and Secrets Manager requests: counted
  by the AWS emulator (local/aws_emulator.py says how the units are reckoned), leaving out the requests a
  benchmark makes to watch the stack (bench.common.observer clients).
- API Gateway: invocations of the functions behind the API's routes.
Not counted: storage (S3, DynamoDB, point-in-time recovery), data transfer (serving videos), CloudWatch
Logs, X-Ray (tracing is on in the template), KMS, secrets held per month, and free tiers.

How a benchmark records its work for pricing (the hook; the chat-batch benchmark uses the same):

    meter = cost.Meter(stack)              # after stack.start(), before the work
    ...                                    # the work, until every execution has ended
    result["cost_counts"] = meter.counts()
    result["cost_work"] = cost.chat_work(requests, completions)     # or cost.video_work(...), cost.work(...)

The `cost` benchmark (last in `make bench`; `python -m bench cost` re-prices the latest results without
running anything) prices every result under bench/results/ that has "cost_counts" and "cost_work".
`price(counts, work)` does the same for one pair, for a benchmark that wants the figure itself.
"""

import json
import time
from collections import defaultdict
from collections.abc import Iterable

from .common import RESULTS, ROOT, observer, row, run_metadata

PRICES = ROOT / "bench" / "prices.json"
CHAT_TARGET_SHARE = 0.01  # issue 4: AWS overhead below 1% of the xAI spend for chat batches
S3_PUT_CLASS = {"PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"}
S3_GET_CLASS = {"GetObject", "HeadObject"}


def load_prices() -> dict:
    return json.loads(PRICES.read_text())


# -- counting ------------------------------------------------------------------------------------------


class Meter:
    """What a local stack does from now on, for pricing (see the module's docstring)."""

    def __init__(self, stack):
        self.stack = stack
        self.started = time.time()
        self.requests = stack.moto.counts()
        self.invocations = {lid: (s.count, s.billed_ms) for lid, s in stack.runtime.stats.items()}

    def counts(self) -> dict:
        stack = self.stack
        functions = {}
        for lid, stats in stack.runtime.stats.items():
            count, billed_ms = self.invocations.get(lid, (0, 0.0))
            if stats.count > count:
                functions[lid] = {
                    "invocations": stats.count - count,
                    "billed_ms": round(stats.billed_ms - billed_ms, 1),
                    "memory_mb": stack.resources.functions[lid].memory,
                }
        api_functions = {route.function for api in stack.resources.apis.values() for route in api.routes}
        now = stack.moto.counts()
        executions, transitions = state_transitions(stack, self.started)
        return {
            "aws_requests": {
                k: v - self.requests.get(k, 0) for k, v in now.items() if v != self.requests.get(k, 0)
            },
            "lambda": functions,
            "api_requests": sum(f["invocations"] for lid, f in functions.items() if lid in api_functions),
            "executions": executions,
            "state_transitions": transitions,
        }


def state_transitions(stack, since: float) -> tuple[int, int]:
    """(executions, state transitions) of the executions of every state machine started since `since`."""
    sfn = observer(stack, "stepfunctions")
    executions = transitions = 0
    for machine in stack.resources.of_type("AWS::StepFunctions::StateMachine").values():
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine):
            for execution in page["executions"]:
                if execution["startDate"].timestamp() < since:
                    continue
                executions += 1
                transitions += _transitions(sfn, execution["executionArn"])
    return executions, transitions


def _transitions(sfn, execution_arn: str) -> int:
    types: dict[str, int] = defaultdict(int)
    for page in sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
        for event in page["events"]:
            types[event["type"]] += 1
    entered = sum(n for name, n in types.items() if name.endswith("StateEntered"))
    retries = max(0, types["TaskScheduled"] - types["TaskStateEntered"])
    return entered + retries


# -- units of work -------------------------------------------------------------------------------------


def work(label: str, units: int, per: int, *, video_seconds=None, chat_tokens=None, chat_requests=0) -> dict:
    """Units of work (`label`, e.g. "video jobs"; figures are given per `per` of them) and what xAI
    charges for them: seconds of video by resolution, and chat tokens by model."""
    return {
        "label": label,
        "units": units,
        "per": per,
        "chat_requests": chat_requests,
        "xai": {"video_seconds": dict(video_seconds or {}), "chat_tokens": dict(chat_tokens or {})},
    }


def chat_tokens(completions: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Prompt and completion tokens by model, from chat.completion bodies (their `usage`)."""
    tokens: dict[str, dict[str, int]] = {}
    for completion in completions:
        usage = completion.get("usage") or {}
        by_model = tokens.setdefault(completion.get("model", "unknown"), {"input": 0, "output": 0})
        by_model["input"] += usage.get("prompt_tokens", 0)
        by_model["output"] += usage.get("completion_tokens", 0)
    return tokens


def chat_work(requests: int, completions: Iterable[dict], per: int = 1_000_000) -> dict:
    """`requests` chat requests (priced per million), xAI's charge from the completions' usage."""
    return work("chat requests", requests, per, chat_tokens=chat_tokens(completions), chat_requests=requests)


def video_work(jobs: int, seconds_by_resolution: dict[str, float], per: int = 1000) -> dict:
    """`jobs` video jobs (priced per thousand); xAI charges for the seconds of the videos it delivered."""
    return work("video jobs", jobs, per, video_seconds=seconds_by_resolution)


# -- pricing -------------------------------------------------------------------------------------------


def price(counts: dict, work: dict, prices: dict | None = None) -> dict:
    """AWS and xAI cost of the counted work, per `work["per"]` units, and AWS's as a share of xAI's."""
    prices = prices or load_prices()
    aws = prices["aws"]
    requests = counts["aws_requests"]

    def usd(name: str, quantity: float) -> float:
        return quantity * aws[name]["usd"] / aws[name]["per"]

    def calls(service: str, actions: set[str] | None = None) -> float:
        return sum(
            n
            for key, n in requests.items()
            if key.startswith(f"{service}:") and (actions is None or key.partition(":")[2] in actions)
        )

    functions = counts["lambda"].values()
    gb_seconds = sum(f["billed_ms"] / 1000 * f["memory_mb"] / 1024 for f in functions)
    items = {
        "Lambda requests": usd("lambda_request", sum(f["invocations"] for f in functions)),
        "Lambda duration": usd("lambda_gb_second_arm64", gb_seconds),
        "Step Functions transitions": usd(
            "stepfunctions_standard_state_transition", counts["state_transitions"]
        ),
        "DynamoDB writes": usd(
            "dynamodb_on_demand_write_request_unit", requests.get("dynamodb:WriteRequestUnits", 0)
        ),
        "DynamoDB reads": usd(
            "dynamodb_on_demand_read_request_unit", requests.get("dynamodb:ReadRequestUnits", 0)
        ),
        "SQS requests": usd("sqs_standard_request", calls("sqs")),
        "SNS publishes": usd("sns_publish", calls("sns", {"Publish", "PublishBatch"})),
        "S3 PUT-class requests": usd("s3_put_request", calls("s3", S3_PUT_CLASS)),
        "S3 GET-class requests": usd("s3_get_request", calls("s3", S3_GET_CLASS)),
        "API Gateway requests": usd("api_gateway_rest_request", counts["api_requests"]),
        "Secrets Manager calls": usd("secrets_manager_api_call", calls("secretsmanager")),
    }
    aws_usd, xai_usd = sum(items.values()), xai_cost(work["xai"], prices)
    scale = work["per"] / work["units"] if work["units"] else 0.0
    return {
        "label": work["label"],
        "per": work["per"],
        "units": work["units"],
        "aws_usd": aws_usd * scale,
        "xai_usd": xai_usd * scale,
        "aws_share_of_xai": aws_usd / xai_usd if xai_usd else None,
        "aws_usd_by_item": {name: value * scale for name, value in items.items()},
        "lambda_gb_seconds": gb_seconds * scale,
        "lambda_ms_per_invocation": (
            sum(f["billed_ms"] for f in functions) / max(1, sum(f["invocations"] for f in functions))
        ),
    }


def xai_cost(usage: dict, prices: dict) -> float:
    """USD for seconds of video by resolution and chat tokens by model (a model with no price: KeyError)."""
    xai = prices["xai"]
    total = 0.0
    for resolution, seconds in usage.get("video_seconds", {}).items():
        rate = xai["video_second"][resolution]
        total += seconds * rate["usd"] / rate["per"]
    for model, tokens in usage.get("chat_tokens", {}).items():
        if model not in xai["chat_tokens"]:
            raise KeyError(f"no chat price for model {model!r} in {PRICES.name}")
        rate = xai["chat_tokens"][model]
        total += (tokens["input"] * rate["input_usd"] + tokens["output"] * rate["output_usd"]) / rate["per"]
    return total


# -- the `cost` benchmark: price what the other benchmarks counted ----------------------------------------


def _sources() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        if path.stem != "cost" and "cost_counts" in result and "cost_work" in result:
            found.append((path.stem, result))
    return found


def run() -> dict:
    prices = load_prices()
    priced = []
    for name, result in _sources():
        figures = price(result["cost_counts"], result["cost_work"], prices)
        priced.append({"source": name, "source_date": result.get("date"), **figures})
    rows = []
    for p in priced:
        chat = p["label"] == "chat requests"
        share = p["aws_share_of_xai"]
        met = (share is not None and share < CHAT_TARGET_SHARE) if chat else None
        target = f"< {CHAT_TARGET_SHARE:.0%} of xAI" if chat else ""
        item = (
            f"AWS cost per {p['per']:,} {p['label']}, xAI's beside it ({p['source']}: {p['units']} measured)"
        )
        rows.append(row(item, p["aws_usd"], p["xai_usd"], "USD", target, met))
    if not any(p["label"] == "chat requests" for p in priced):
        rows.append(
            row("AWS cost per 1,000,000 chat requests (no benchmark has recorded chat-batch counts yet)",
                None, None, "USD", f"< {CHAT_TARGET_SHARE:.0%} of xAI")
        )  # fmt: skip
    return {
        "benchmark": "cost",
        **run_metadata(),
        "prices": {"file": str(PRICES.relative_to(ROOT)), "date": prices["date"], "region": prices["region"]},
        "priced": priced,
        "rows": rows,
    }


def report(result: dict) -> str:
    prices = result["prices"]
    lines = [
        f"Cost at {prices['region']} list prices ({prices['file']}, {prices['date']}), from what each "
        "benchmark counted on the local stack:"
    ]
    for p in result["priced"]:
        items = sorted(p["aws_usd_by_item"].items(), key=lambda item: -item[1])
        top = ", ".join(f"{name} ${value:.4f}" for name, value in items if value > 0)
        share = "—" if p["aws_share_of_xai"] is None else f"{p['aws_share_of_xai']:.3%}"
        lines.append(
            f"- {p['source']}: AWS ${p['aws_usd']:.4f} per {p['per']:,} {p['label']} ({top}) beside xAI "
            f"${p['xai_usd']:,.2f}: {share} of it. (Lambda: {p['lambda_ms_per_invocation']:.0f} ms per "
            "invocation as timed on the local stack.)"
        )
    lines.append(
        "Not counted: storage, data transfer (serving videos), CloudWatch Logs, X-Ray, KMS, secrets per "
        "month, free tiers. Lambda time is the local runtime's, inflated by sharing one Python process."
    )
    return "\n".join(lines) + "\n"
