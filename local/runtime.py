"""Runs the template's Lambda functions in this process, as the Lambda service would run them.

Handler, environment, timeout and memory come from the translated template (local/cloudformation.py).
Every function's environment is laid into this process's environment once, so two functions may not
give one variable different values. Each function has one execution environment, so it serves one
invocation at a time, as a Lambda environment does (module state such as Powertools' resolver
assumes it). moto's Lambda invoke is routed here, so Step Functions (and S3 or SNS targets) in the
emulator call the real handlers.
"""

import importlib.util
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from .cloudformation import ROOT, FunctionSpec, TemplateError

LAYER_DIR = ROOT / "layers" / "common"


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
    count: int = 0
    errors: int = 0
    billed_ms: float = 0.0


class _Environment:
    """One execution environment: a thread that lives across invocations, so what a handler caches
    per container (clients, tables, secrets) is reused as in Lambda."""

    def __init__(self, name: str):
        self._requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name=f"lambda-{name}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            handler, event, context, crash, outcome, done = self._requests.get()
            try:
                if crash:
                    raise RuntimeError(crash)
                outcome["result"] = handler(event, context)
            except Exception as exc:  # reported to the caller the way Lambda reports it
                outcome["error"] = exc
            done.set()

    def run(self, handler, event, context, crash: str | None, timeout: float) -> dict | None:
        """The invocation's outcome ({"result"} or {"error"}), or None if it outlived the timeout."""
        outcome: dict = {}
        done = threading.Event()
        self._requests.put((handler, event, context, crash, outcome, done))
        return outcome if done.wait(timeout) else None


class LambdaRuntime:
    def __init__(self, functions: dict[str, FunctionSpec]):
        self.functions = functions
        self.by_name = {spec.name: spec for spec in functions.values()}
        self.stats: dict[str, InvocationStats] = {lid: InvocationStats() for lid in functions}
        self._lock = threading.Lock()
        self._modules: dict[Path, object] = {}
        self._locks = {lid: threading.Lock() for lid in functions}
        self._environments: dict[str, _Environment] = {}
        self.fail_next: dict[str, list[str]] = {}  # logical id -> injected crash messages

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

    def handler(self, spec: FunctionSpec):
        module_name, function_name = spec.handler.rsplit(".", 1)
        path = spec.code_dir / f"{module_name.replace('.', '/')}.py"
        with self._lock:
            module = self._modules.get(path)
            if module is None:
                unique = f"xjobs_function_{spec.code_dir.name}_{module_name.replace('.', '_')}"
                loader = importlib.util.spec_from_file_location(unique, path)
                module = importlib.util.module_from_spec(loader)
                sys.modules[unique] = module
                loader.loader.exec_module(module)
                self._modules[path] = module
        return getattr(module, function_name)

    def invoke(self, logical_id_or_name: str, event: dict):
        """Run one invocation with the function's timeout; raises FunctionError as Lambda would report."""
        spec = self.functions.get(logical_id_or_name) or self.by_name[logical_id_or_name.split(":")[-1]]
        handler = self.handler(spec)
        started = time.time()
        context = LambdaContext(
            function_name=spec.name,
            memory_limit_in_mb=spec.memory,
            invoked_function_arn=spec.arn,
            aws_request_id=str(uuid.uuid4()),
            deadline=started + spec.timeout,
        )
        with self._locks[spec.logical_id]:
            environment = self._environments.get(spec.logical_id)
            if environment is None:
                environment = self._environments[spec.logical_id] = _Environment(spec.logical_id)
            crash = self.fail_next.get(spec.logical_id)
            outcome = environment.run(handler, event, context, crash.pop(0) if crash else None, spec.timeout)
            if outcome is None:
                # Lambda ends a timed-out environment; a thread cannot be ended, so it is abandoned.
                self._environments.pop(spec.logical_id)
        stats = self.stats[spec.logical_id]
        with self._lock:
            stats.count += 1
            stats.billed_ms += (time.time() - started) * 1000
        if outcome is None:
            stats.errors += 1
            raise FunctionError("Sandbox.Timedout", f"Task timed out after {spec.timeout}.00 seconds")
        if "error" in outcome:
            stats.errors += 1
            exc = outcome["error"]
            if os.environ.get("XJOBS_LOCAL_TRACEBACKS"):
                traceback.print_exception(exc)
            raise FunctionError(type(exc).__name__, str(exc)) from exc
        return outcome.get("result")

    def patch_moto(self) -> None:
        """Route moto's Lambda invocations (from Step Functions, S3, SNS) to the in-process handlers."""
        from moto.awslambda.models import LambdaFunction
        from moto.awslambda_simple.models import LambdaSimpleBackend

        runtime = self

        def run(function_name: str, body, response_headers: dict) -> str:
            try:
                payload = json.loads(body or "{}")
                return json.dumps(runtime.invoke(function_name, payload))
            except FunctionError as exc:
                response_headers["x-amz-function-error"] = "Unhandled"
                return json.dumps({"errorType": exc.error_type, "errorMessage": exc.message})

        def backend_invoke(self, function_name, qualifier, body, headers, response_headers):
            fn = self.get_function(function_name)
            return run(fn.function_name, body, response_headers).encode()

        LambdaSimpleBackend.invoke = backend_invoke
        LambdaFunction.invoke = lambda self, body, request_headers, response_headers: run(
            self.function_name, body, response_headers
        )
