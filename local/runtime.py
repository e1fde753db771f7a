"""Runs the template's Lambda functions in this process, as the Lambda service would run them.

Handler, environment, timeout, memory and reserved concurrency come from the translated template
(local/cloudformation.py). Every function's environment is laid into this process's environment once, so
two functions may not give one variable different values.

Execution environments. As in Lambda, an invocation takes an idle environment of its function or, if
none is idle, starts a new one; a function has as many environments as it has concurrent invocations,
up to its ReservedConcurrentExecutions (else DEFAULT_CONCURRENCY). Beyond that, a synchronous invoke is
throttled (TooManyRequestsException) and an asynchronous one waits, as Lambda's event queue does. An
environment is a thread that lives across invocations and loads its own copy of the handler module, so
what a handler keeps at module level (a Powertools resolver's current request, a BatchProcessor's
records, clients, caches) belongs to that environment alone. The layer's packages (xjobs, Powertools,
boto3) are imported once per process; what Powertools' API resolver keeps on its classes is made
per-thread, i.e. per environment (see _isolate_powertools_router_state).

moto's Lambda invoke is routed here, so Step Functions (synchronous) and S3 or SNS (asynchronous, as in
AWS) in the emulator call the real handlers.

Asynchronous invocations are retried as the function's EventInvokeConfig says (MaximumRetryAttempts, else
twice) and, once every attempt failed, delivered to its on-failure destination with the record Lambda
sends there (``on_failure`` does the delivery; local/event_sources.py provides it).

Metrics. Powertools writes CloudWatch metrics as EMF JSON lines on stdout, which CloudWatch Logs turns into
metrics on AWS. Here the print of those lines is intercepted: each line is parsed and counted in
``metrics`` (an EmfMetrics), attributed to the function whose environment printed it, so tests and tools
read what CloudWatch would have got. The lines are not echoed unless XJOBS_LOCAL_EMF=1.

Credentials. Each function calls AWS as its execution role (see local/iam.py): every botocore client of
this process resolves its credentials when it signs, from the thread that signs. An environment's thread,
and the thread-pool work it submits, sign with its function's role credentials (use_role_credentials),
moto's Step Functions interpreter invokes a state machine's Lambda tasks with the state machine's role,
and any other thread signs with the process's own (the environment's AWS_ACCESS_KEY_ID: the operator's).
"""

import importlib.util
import json
import logging
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import botocore.session
from botocore.credentials import Credentials, ReadOnlyCredentials

from .cloudformation import ROOT, FunctionSpec, TemplateError

LAYER_DIR = ROOT / "layers" / "common"
DEFAULT_CONCURRENCY = 50  # a function without ReservedConcurrentExecutions (AWS: the account's 1,000)
INIT_TIMEOUT = 10.0  # Lambda's limit on an environment's init phase (importing the handler module)
# Lambda retries a failed asynchronous invocation twice, about 1 and 2 minutes later; locally seconds,
# so a development loop sees the retries happen.
ASYNC_RETRY_DELAYS = (1.0, 2.0)
ASYNC_THROTTLE_BACKOFF = 0.2  # a throttled asynchronous event waits in the queue, not counted as a retry
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # bytes of a synchronous invocation's event, and of its response
ASYNC_PAYLOAD_LIMIT = 1024 * 1024  # bytes of an asynchronous invocation's event (1 MB since October 2025)

log = logging.getLogger("xjobs.local.runtime")


@dataclass
class EmfPoint:
    name: str
    value: float
    unit: str
    dimensions: dict[str, str]  # every dimension value the line carries
    function: str | None  # the logical id of the function that printed it, when known


class EmfMetrics:
    """The metrics of the EMF lines the functions printed, as CloudWatch would extract them."""

    def __init__(self):
        self.points: list[EmfPoint] = []
        self._lock = threading.Lock()

    def add_line(self, text: str, function: str | None) -> bool:
        """Count an EMF line; False if the text is not one."""
        try:
            document = json.loads(text)
            definitions = document["_aws"]["CloudWatchMetrics"]
        except (ValueError, TypeError, KeyError):
            return False
        points = []
        for definition in definitions:
            names = {name for dimension_set in definition.get("Dimensions", []) for name in dimension_set}
            dimensions = {name: str(document[name]) for name in names if name in document}
            for metric in definition.get("Metrics", []):
                values = document.get(metric["Name"])
                for value in values if isinstance(values, list) else [values]:
                    if isinstance(value, int | float):
                        points.append(
                            EmfPoint(
                                metric["Name"], float(value), metric.get("Unit", ""), dimensions, function
                            )
                        )
        with self._lock:
            self.points.extend(points)
        return True

    def matching(self, name: str, function: str | None = None, **dimensions: str) -> list[EmfPoint]:
        """The data points of ``name`` that carry these dimension values (and came from ``function``)."""
        with self._lock:
            points = list(self.points)
        return [
            p
            for p in points
            if p.name == name
            and (function is None or p.function == function)
            and all(p.dimensions.get(k) == str(v) for k, v in dimensions.items())
        ]

    def sum(self, name: str, function: str | None = None, **dimensions: str) -> float:
        return sum(p.value for p in self.matching(name, function, **dimensions))

    def clear(self) -> None:
        with self._lock:
            self.points.clear()


_emf_sink: EmfMetrics | None = None
_print = print


def _capture_emf_print(*args, **kwargs) -> None:
    """Powertools' print of an EMF line (its metric modules' `print`), parsed and counted locally."""
    text = " ".join(str(a) for a in args)
    sink = _emf_sink
    counted = sink is not None and sink.add_line(text, current_principal())
    if not counted or os.environ.get("XJOBS_LOCAL_EMF"):
        _print(*args, **kwargs)


def _intercept_emf() -> None:
    """Shadow the builtin print in the Powertools modules that print EMF lines (idempotent)."""
    from aws_lambda_powertools.metrics import base
    from aws_lambda_powertools.metrics.provider.cloudwatch_emf import cloudwatch

    for module in (base, cloudwatch):
        module.print = _capture_emf_print


class FunctionError(RuntimeError):
    """An invocation that ended in an error, carried as Lambda reports it (errorType, errorMessage)."""

    def __init__(self, error_type: str, message: str):
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


@dataclass
class LambdaContext:
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    deadline: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.time()) * 1000))


@dataclass
class InvocationStats:
    count: int = 0  # invocations that ran (throttled ones did not)
    errors: int = 0  # of which ended in an error or a timeout
    billed_ms: float = 0.0  # init (billed since 2025) + handler time
    throttles: int = 0  # invocations refused: every environment the function may have was busy
    environments: int = 0  # environments started (cold starts)
    running: int = 0  # invocations in progress now
    max_concurrency: int = 0  # the most invocations ever in progress at once


@dataclass
class _Invocation:
    event: dict
    context: LambdaContext
    timeout: float
    crash: str | None
    initialized: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: Exception | None = None


class _Environment:
    """One execution environment: a thread that serves one invocation at a time, with its own copy of the
    handler module, loaded (the init phase) when its first invocation arrives."""

    def __init__(self, spec: FunctionSpec, number: int):
        self.spec = spec
        self.number = number
        self.handler = None
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        name = f"lambda-{spec.logical_id}-{number}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def run(self, invocation: _Invocation) -> None:
        self._requests.put(invocation)

    def retire(self) -> None:
        self._requests.put(None)

    def _serve(self) -> None:
        _identity.principal = self.spec.logical_id
        while (invocation := self._requests.get()) is not None:
            if self.handler is None:
                try:
                    self.handler = self._load()
                except Exception as exc:  # the environment failed to start; the caller discards it
                    invocation.error = _init_error(exc)
                    invocation.initialized.set()
                    invocation.done.set()
                    continue
            invocation.context.deadline = time.time() + invocation.timeout
            invocation.initialized.set()
            try:
                if invocation.crash:
                    raise RuntimeError(invocation.crash)
                invocation.result = self.handler(invocation.event, invocation.context)
            except Exception as exc:  # reported to the caller the way Lambda reports it
                invocation.error = exc
            invocation.done.set()

    def _load(self):
        module_name, function_name = self.spec.handler.rsplit(".", 1)
        path = self.spec.code_dir / f"{module_name.replace('.', '/')}.py"
        # A module name of its own per environment: nothing at module level is shared with another one.
        unique = f"xjobs_lambda_{self.spec.logical_id}_{self.number}_{module_name.replace('.', '_')}"
        loader = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[unique] = module
        try:
            loader.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(unique, None)
            raise
        try:
            return getattr(module, function_name)
        except AttributeError:
            raise FunctionError(
                "Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'"
            ) from None


def _init_error(exc: Exception) -> FunctionError:
    """An init failure as Lambda's Python runtime reports it."""
    if isinstance(exc, FunctionError):
        return exc
    if isinstance(exc, ImportError | FileNotFoundError):
        return FunctionError("Runtime.ImportModuleError", f"Unable to import module: {exc}")
    if isinstance(exc, SyntaxError):
        return FunctionError("Runtime.UserCodeSyntaxError", f"Syntax error in module: {exc}")
    return FunctionError(type(exc).__name__, str(exc))


class _Pool:
    """A function's execution environments: the idle ones, and how many are busy."""

    def __init__(self, spec: FunctionSpec, stats: InvocationStats):
        self.spec = spec
        self.stats = stats
        self.limit = DEFAULT_CONCURRENCY if spec.reserved_concurrency is None else spec.reserved_concurrency
        self.idle: list[_Environment] = []
        self.lock = threading.Lock()

    def acquire(self) -> _Environment:
        """An idle environment (the most recently used, as Lambda favours warm ones) or a new one."""
        with self.lock:
            if self.stats.running >= self.limit:
                self.stats.throttles += 1
                raise FunctionError("TooManyRequestsException", "Rate Exceeded.")
            self.stats.running += 1
            self.stats.max_concurrency = max(self.stats.max_concurrency, self.stats.running)
            if self.idle:
                return self.idle.pop()
            self.stats.environments += 1
            number = self.stats.environments
        return _Environment(self.spec, number)

    def release(self, environment: _Environment, reusable: bool) -> None:
        with self.lock:
            self.stats.running -= 1
            if reusable:
                self.idle.append(environment)
                return
        environment.retire()  # its thread ends once it is done with what it is running

    def retire_all(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for environment in idle:
            environment.retire()


class LambdaRuntime:
    def __init__(self, functions: dict[str, FunctionSpec]):
        self.functions = functions
        self.by_name = {spec.name: spec for spec in functions.values()}
        self.stats: dict[str, InvocationStats] = {lid: InvocationStats() for lid in functions}
        self._pools = {lid: _Pool(spec, self.stats[lid]) for lid, spec in functions.items()}
        self._lock = threading.Lock()
        self.fail_next: dict[str, list[str]] = {}  # logical id -> injected crash messages
        self._faults: dict[str, list[str]] = {}  # logical id -> injected faults, next first (see inject)
        self.async_retry_delays = ASYNC_RETRY_DELAYS
        self.invoke_configs: dict[str, dict] = {}  # logical id -> {MaximumRetryAttempts, OnFailure}
        # Delivers a failed asynchronous event's record to an on-failure destination: (ARN, record).
        self.on_failure = None
        self.metrics = EmfMetrics()
        global _emf_sink
        _emf_sink = self.metrics
        _intercept_emf()
        self._async_pending = 0
        self._stopping = threading.Event()
        _isolate_powertools_router_state()

    def install_environment(self, extra: dict[str, str]) -> None:
        merged: dict[str, str] = {}
        for spec in self.functions.values():
            for key, value in spec.environment.items():
                if merged.get(key, value) != value:
                    raise TemplateError(
                        f"two functions set {key} differently; the local stack shares one process"
                    )
                merged[key] = value
        os.environ.update(merged)
        os.environ.update(extra)
        if str(LAYER_DIR) not in sys.path:
            sys.path.insert(0, str(LAYER_DIR))

    def spec(self, logical_id_or_name: str) -> FunctionSpec:
        """A function by logical id, name or ARN."""
        spec = self.functions.get(logical_id_or_name) or self.by_name.get(logical_id_or_name.split(":")[-1])
        if spec is None:
            raise FunctionError("ResourceNotFoundException", f"Function not found: {logical_id_or_name}")
        return spec

    FAULTS = ("throttle", "timeout", "crash")

    def inject(self, logical_id: str, fault: str, times: int = 1) -> None:
        """Make the function's next `times` invocations fail as AWS can make them fail:
        "throttle": refused with TooManyRequestsException before it runs (no environment was free);
        "timeout": the handler runs to its end, but the caller gets Sandbox.Timedout, as when a
        function is stopped after its side effects and before its reply;
        "crash": the handler raises RuntimeError before doing anything."""
        if fault not in self.FAULTS:
            raise ValueError(f"fault must be one of {', '.join(self.FAULTS)}")
        self.spec(logical_id)
        with self._lock:
            self._faults.setdefault(logical_id, []).extend([fault] * times)

    def _next_fault(self, logical_id: str) -> str | None:
        with self._lock:
            faults = self._faults.get(logical_id)
            return faults.pop(0) if faults else None

    def invoke(self, logical_id_or_name: str, event: dict, *, request_id: str | None = None):
        """One synchronous invocation with the function's timeout. Raises FunctionError as Lambda would
        report it: the handler's exception, Sandbox.Timedout, or TooManyRequestsException (throttled)."""
        spec = self.spec(logical_id_or_name)
        pool = self._pools[spec.logical_id]
        stats = self.stats[spec.logical_id]
        payload = json.loads(_serialized(event, SYNC_PAYLOAD_LIMIT))  # what Lambda delivers: a copy
        fault = self._next_fault(spec.logical_id)
        if fault == "throttle":
            with self._lock:
                stats.throttles += 1
            raise FunctionError("TooManyRequestsException", "Rate Exceeded.")
        environment = pool.acquire()
        with self._lock:
            crashes = self.fail_next.get(spec.logical_id)
            crash = crashes.pop(0) if crashes else None
        if fault == "crash":
            crash = "injected crash"
        context = LambdaContext(
            function_name=spec.name,
            memory_limit_in_mb=spec.memory,
            invoked_function_arn=spec.arn,
            aws_request_id=request_id or str(uuid.uuid4()),
            deadline=time.time() + spec.timeout,
        )
        invocation = _Invocation(payload, context, spec.timeout, crash)
        started = time.time()
        environment.run(invocation)
        finished = invocation.initialized.wait(INIT_TIMEOUT) and invocation.done.wait(spec.timeout)
        # Lambda ends a timed-out environment; a thread cannot be ended, so it is abandoned. An environment
        # whose init failed is discarded too: the next invocation starts a new one.
        pool.release(environment, reusable=finished and environment.handler is not None)
        with self._lock:
            stats.count += 1
            stats.billed_ms += (time.time() - started) * 1000
            if not finished or invocation.error is not None or fault == "timeout":
                stats.errors += 1
        if not finished or fault == "timeout":
            raise FunctionError("Sandbox.Timedout", f"Task timed out after {spec.timeout}.00 seconds")
        if invocation.error is not None:
            exc = invocation.error
            if isinstance(exc, FunctionError):
                raise exc
            if os.environ.get("XJOBS_LOCAL_TRACEBACKS"):
                traceback.print_exception(exc)
            raise FunctionError(type(exc).__name__, str(exc)) from exc
        try:
            response = json.dumps(invocation.result)
        except (TypeError, ValueError) as exc:
            with self._lock:
                stats.errors += 1
            raise FunctionError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from exc
        if len(response.encode()) > SYNC_PAYLOAD_LIMIT:
            with self._lock:
                stats.errors += 1
            raise FunctionError(
                "Function.ResponseSizeTooLarge",
                f"Response payload size exceeded maximum allowed payload size ({SYNC_PAYLOAD_LIMIT} bytes).",
            )
        return json.loads(response)

    def invoke_async(self, logical_id_or_name: str, event: dict) -> str:
        """An asynchronous invocation (InvocationType Event; how S3 and SNS invoke): returns the request
        id at once. The event is retried twice if the function fails (ASYNC_RETRY_DELAYS apart, same
        request id), waits while the function is throttled, and is dropped with a warning after that."""
        spec = self.spec(logical_id_or_name)
        _serialized(event, ASYNC_PAYLOAD_LIMIT)
        request_id = str(uuid.uuid4())
        with self._lock:
            self._async_pending += 1
        threading.Thread(
            target=self._run_async,
            args=(spec, event, request_id),
            name=f"lambda-event-{spec.logical_id}",
            daemon=True,
        ).start()
        return request_id

    @property
    def async_pending(self) -> int:
        """Asynchronous events not yet handled (queued, running, or waiting for a retry)."""
        with self._lock:
            return self._async_pending

    def _run_async(self, spec: FunctionSpec, event: dict, request_id: str) -> None:
        config = self.invoke_configs.get(spec.logical_id, {})
        retries = list(self.async_retry_delays)[
            : config.get("MaximumRetryAttempts", len(self.async_retry_delays))
        ]
        attempts = 0
        try:
            while not self._stopping.is_set():
                try:
                    attempts += 1
                    self.invoke(spec.logical_id, event, request_id=request_id)
                    return
                except FunctionError as exc:
                    if exc.error_type == "TooManyRequestsException":
                        attempts -= 1  # a throttled event waits in the queue: not an attempt
                        self._stopping.wait(ASYNC_THROTTLE_BACKOFF)
                        continue
                    if not retries:
                        self._failed(spec, event, request_id, exc, attempts, config.get("OnFailure"))
                        return
                    self._stopping.wait(retries.pop(0))
        finally:
            with self._lock:
                self._async_pending -= 1

    def _failed(
        self, spec: FunctionSpec, event: dict, request_id: str, exc: FunctionError, attempts: int, destination
    ) -> None:
        """Every attempt failed: the on-failure destination gets the record Lambda sends, or it is dropped."""
        if not destination or self.on_failure is None:
            log.warning("%s: event %s dropped after retries: %s", spec.logical_id, request_id, exc)
            return
        record = {
            "version": "1.0",
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {
                "requestId": request_id,
                "functionArn": f"{spec.arn}:$LATEST",
                "condition": "RetriesExhausted",
                "approximateInvokeCount": attempts,
            },
            "requestPayload": event,
            "responseContext": {
                "statusCode": 200,
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "responsePayload": {"errorType": exc.error_type, "errorMessage": exc.message},
        }
        try:
            self.on_failure(destination, record)
        except Exception:
            log.exception(
                "%s: event %s could not reach its on-failure destination", spec.logical_id, request_id
            )

    def stop(self) -> None:
        """Ends pending asynchronous retries and the idle environments' threads."""
        self._stopping.set()
        for pool in self._pools.values():
            pool.retire_all()

    def use_role_credentials(
        self, credentials: dict[str, ReadOnlyCredentials], state_machines: dict[str, str]
    ) -> None:
        """Function or state machine logical id -> the credentials it signs with (its role's, from STS);
        state_machines: state machine ARN -> logical id."""
        _role_credentials.clear()
        _role_credentials.update(credentials)
        _state_machines.clear()
        _state_machines.update(state_machines)
        _sign_as_the_running_principal()

    def patch_moto(self) -> None:
        """Route moto's Lambda invocations to the in-process handlers: Invoke (Step Functions, boto3) runs
        synchronously unless its InvocationType is Event; S3 and SNS notifications run asynchronously."""
        from moto.awslambda.models import LambdaFunction
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.core.exceptions import JsonRESTError

        runtime = self

        # Errors of the Invoke request itself, not of the function: an HTTP error status, not a 200.
        service_errors = {"TooManyRequestsException": 429, "RequestEntityTooLargeException": 413}

        def service_error(exc: FunctionError) -> JsonRESTError:
            error = JsonRESTError(exc.error_type, exc.message)
            error.code = service_errors[exc.error_type]
            return error

        def run(function_name: str, body, response_headers: dict) -> str:
            try:
                payload = json.loads(body or "{}")
                return json.dumps(runtime.invoke(function_name, payload))
            except FunctionError as exc:
                if exc.error_type in service_errors:
                    raise service_error(exc) from None
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": exc.error_type, "errorMessage": exc.message})

        def backend_invoke(self, function_name, qualifier, body, headers, response_headers):
            fn = self.get_function(function_name)
            invocation_type = (headers or {}).get("X-Amz-Invocation-Type", "RequestResponse")
            if invocation_type == "Event":
                try:
                    runtime.invoke_async(fn.function_name, json.loads(body or "{}"))
                except FunctionError as exc:
                    raise service_error(exc) from None
                return b""
            if invocation_type == "DryRun":
                return b""
            return run(fn.function_name, body, response_headers).encode()

        def notification_invoke(self, body, request_headers, response_headers):
            runtime.invoke_async(self.function_name, json.loads(body or "{}"))
            return ""

        LambdaSimpleBackend.invoke = backend_invoke
        LambdaFunction.invoke = notification_invoke


def _serialized(event: dict, limit: int) -> str:
    """The event as JSON, refused as Lambda refuses a request over its payload limit."""
    text = json.dumps(event)
    if len(text.encode()) > limit:
        raise FunctionError(
            "RequestEntityTooLargeException", f"Request must be smaller than {limit} bytes for the operation"
        )
    return text


_identity = threading.local()  # .principal: logical id of the function or state machine the thread works for
_role_credentials: dict[str, ReadOnlyCredentials] = {}
_state_machines: dict[str, str] = {}  # ARN -> logical id


def current_principal() -> str | None:
    return getattr(_identity, "principal", None)


def _as_principal(principal: str | None, fn, *args, **kwargs):
    before = current_principal()
    _identity.principal = principal
    try:
        return fn(*args, **kwargs)
    finally:
        _identity.principal = before


class _RunningPrincipalCredentials(Credentials):
    """Credentials looked up at signing time: the role's of the function (or state machine) the signing
    thread works for, else the process's own from the environment."""

    def __init__(self):
        self.method = "xjobs-local-runtime"

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        principal = current_principal()
        if principal in _role_credentials:
            return _role_credentials[principal]
        environ = os.environ
        return ReadOnlyCredentials(
            environ.get("AWS_ACCESS_KEY_ID"),
            environ.get("AWS_SECRET_ACCESS_KEY"),
            environ.get("AWS_SESSION_TOKEN"),
        )

    access_key = property(lambda self: self.get_frozen_credentials().access_key)
    secret_key = property(lambda self: self.get_frozen_credentials().secret_key)
    token = property(lambda self: self.get_frozen_credentials().token)


def _sign_as_the_running_principal() -> None:
    """Every botocore session of the process hands out _RunningPrincipalCredentials (clients given
    explicit keys keep them); work a function submits to a thread pool keeps the function's identity; a
    state machine's Lambda tasks run as the state machine."""
    if getattr(botocore.session.Session.get_credentials, "_xjobs", False):
        return
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    credentials = _RunningPrincipalCredentials()

    def get_credentials(self):
        return credentials

    get_credentials._xjobs = True
    botocore.session.Session.get_credentials = get_credentials

    submit = ThreadPoolExecutor.submit

    def submit_as_principal(self, fn, /, *args, **kwargs):
        principal = current_principal()
        if principal is None:
            return submit(self, fn, *args, **kwargs)
        return submit(self, _as_principal, principal, fn, *args, **kwargs)

    ThreadPoolExecutor.submit = submit_as_principal

    invoke = lambda_eval_utils.execute_lambda_function_integration

    def invoke_as_state_machine(env, *args, **kwargs):
        arn = env.states.context_object.context_object_data["StateMachine"]["Id"]
        return _as_principal(_state_machines.get(arn), invoke, env, *args, **kwargs)

    lambda_eval_utils.execute_lambda_function_integration = invoke_as_state_machine


_router_state = threading.local()


class _PerThread:
    """A class attribute whose value belongs to the thread that set it (see below)."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance, owner=None):
        return getattr(_router_state, self.name, None)

    def __set__(self, instance, value) -> None:
        setattr(_router_state, self.name, value)


def _isolate_powertools_router_state() -> None:
    """Powertools' API resolvers put the current request on a class: `BaseRouter.current_event = ...` and
    `BaseRouter.lambda_context = ...` at each resolve(), read back by every Router (such as xjobs.api's
    shared one). That is per process in Lambda, where an environment is a process; here environments are
    threads of one process, so the two attributes are made per thread: a descriptor on BaseRouter for
    reads through instances, and one on its metaclass for `BaseRouter.x = ...` assignments."""
    try:
        from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
    except ImportError:
        return
    if isinstance(BaseRouter.__dict__.get("current_event"), _PerThread):
        return
    names = ("current_event", "lambda_context")
    metaclass = type("PerThreadRouterMeta", (type(BaseRouter),), {name: _PerThread(name) for name in names})
    for name in names:
        setattr(BaseRouter, name, _PerThread(name))
    BaseRouter.__class__ = metaclass
