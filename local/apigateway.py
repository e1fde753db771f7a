"""API Gateway (REST API, Lambda proxy integration) on loopback, built from the translated template.

What a request meets, in API Gateway's order: the route (an unknown one is MISSING_AUTHENTICATION_TOKEN),
the payload limit (10 MB), the route's Lambda authorizer (its identity sources: a missing one is a 401
without calling it; "Unauthorized" from it is a 401, a Deny a 403; its answer cached for its TTL by
identity), the API key and usage plan (the key comes from `x-api-key` or, with ApiKeySourceType
AUTHORIZER, from the authorizer's usageIdentifierKey; the plan's throttle and quota apply per key),
then the Lambda proxy event (binary media types arrive base64-encoded; the authorizer's context in
requestContext.authorizer). Refusals are shaped by the template's GatewayResponses. API keys and usage
plans are read from the AWS emulator, so a key or plan created with boto3 or the admin command works
at once.
"""

import base64
import fnmatch
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .cloudformation import ACCOUNT, REGION, ApiSpec, Authorizer
from .runtime import FunctionError, LambdaRuntime

KEY_CACHE_SECONDS = 1.0
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024

# Gateway response types: their default status and message, as API Gateway answers them.
DEFAULTS = {
    "MISSING_AUTHENTICATION_TOKEN": (403, "Missing Authentication Token"),
    "UNAUTHORIZED": (401, "Unauthorized"),
    "ACCESS_DENIED": (403, "User is not authorized to access this resource with an explicit deny"),
    "AUTHORIZER_FAILURE": (500, None),
    "AUTHORIZER_CONFIGURATION_ERROR": (500, None),
    "INVALID_API_KEY": (403, "Forbidden"),
    "THROTTLED": (429, "Too Many Requests"),
    "QUOTA_EXCEEDED": (429, "Limit Exceeded"),
    "REQUEST_TOO_LARGE": (413, "Request Too Long"),
    "INTEGRATION_FAILURE": (502, "Internal server error"),
    "INTEGRATION_TIMEOUT": (504, "Endpoint request timed out"),
}
PERIOD_SECONDS = {"DAY": 86400, "WEEK": 7 * 86400, "MONTH": 30 * 86400}


class _TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Refused(Exception):
    def __init__(self, kind: str, message: str | None = None):
        super().__init__(kind)
        self.kind, self.message = kind, message


class ApiGateway:
    def __init__(self, api: ApiSpec, runtime: LambdaRuntime, apigateway_client, host: str, port: int):
        self.api = api
        self.runtime = runtime
        self.client = apigateway_client
        self.routes = [
            (
                r.method,
                re.compile("^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(r.path)) + "$"),
                r,
            )
            for r in api.routes
        ]
        self._keys: dict[str, tuple[str, dict]] = {}  # key value -> (key id, its usage plan)
        self._keys_read = 0.0
        self._buckets: dict[tuple[str, str], _TokenBucket] = {}
        self._quota_used: dict[tuple[str, str, int], int] = {}
        self._auth_cache: dict[tuple, tuple[float, dict]] = {}
        self._lock = threading.Lock()
        self.authorizer_calls = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self):
                status, headers, body = gateway.handle(self.command, self.path, self.headers, self._body())
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="api-gateway", daemon=True)

    def start(self) -> "ApiGateway":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _usage_key(self, value: str) -> tuple[str, dict] | None:
        """The enabled API key with this value and the usage plan it is in, or None."""
        with self._lock:
            # A key unknown here may have just been created in the emulator: look again.
            if value not in self._keys or time.monotonic() - self._keys_read > KEY_CACHE_SECONDS:
                keys = self.client.get_api_keys(includeValues=True, limit=500)["items"]
                plans = {}
                for plan in self.client.get_usage_plans(limit=500)["items"]:
                    for key in self.client.get_usage_plan_keys(usagePlanId=plan["id"], limit=500)["items"]:
                        plans[key["id"]] = plan
                self._keys = {
                    k["value"]: (k["id"], plans[k["id"]])
                    for k in keys
                    if k.get("enabled", True) and k["id"] in plans
                }
                self._keys_read = time.monotonic()
            return self._keys.get(value)

    def _meter(self, key_id: str, plan: dict) -> None:
        """The usage plan's throttle (token bucket) and quota (requests per period), per key."""
        throttle, quota = plan.get("throttle") or {}, plan.get("quota") or {}
        with self._lock:
            if throttle.get("rateLimit"):
                rate = float(throttle["rateLimit"])
                bucket = self._buckets.setdefault(
                    (plan["id"], key_id), _TokenBucket(rate, int(throttle.get("burstLimit") or rate))
                )
                if not bucket.take():
                    raise _Refused("THROTTLED")
            if quota.get("limit"):
                window = int(time.time() // PERIOD_SECONDS.get(quota.get("period", "DAY"), 86400))
                used = self._quota_used.get((plan["id"], key_id, window), 0)
                if used >= int(quota["limit"]):
                    raise _Refused("QUOTA_EXCEEDED")
                self._quota_used[(plan["id"], key_id, window)] = used + 1

    def _route_throttled(self, route) -> bool:
        """The stage's MethodSettings throttle: one bucket for the route, whoever calls."""
        with self._lock:
            bucket = self._buckets.setdefault(
                f"route {route.method} {route.path}", _TokenBucket(*route.throttle)
            )
            return not bucket.take()

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        try:
            return self._handle(method, raw_path, headers, body)
        except _Refused as refused:
            return self._gateway_response(refused.kind, refused.message)

    def _handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        url = urlsplit(raw_path)
        path = url.path
        if path.startswith(f"/{self.api.stage}/"):
            path = path[len(self.api.stage) + 1 :]
        match = next(
            ((route, m) for verb, rx, route in self.routes if verb == method and (m := rx.match(path))), None
        )
        if match is None:
            raise _Refused("MISSING_AUTHENTICATION_TOKEN")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise _Refused("REQUEST_TOO_LARGE")
        route, found = match
        if route.throttle and self._route_throttled(route):
            raise _Refused("THROTTLED")
        event = self._event(method, path, url.query, route.path, found.groupdict(), headers, body)
        context = {}
        if route.authorizer:
            context = self._authorize(self.api.authorizers[route.authorizer], route.authorizer, event)
            event["requestContext"]["authorizer"] = context
        if route.api_key_required:
            if self.api.api_key_source == "AUTHORIZER":
                value = context.get("usageIdentifierKey") or ""
            else:
                value = headers.get("x-api-key", "")
            usage = self._usage_key(value) if value else None
            if usage is None:
                raise _Refused("INVALID_API_KEY")
            self._meter(usage[0], usage[1])
            event["requestContext"]["identity"].update(apiKey=value, apiKeyId=usage[0])
        if context:
            context.pop("usageIdentifierKey", None)
        try:
            reply = self.runtime.invoke(route.function, event)
        except FunctionError as exc:
            if exc.error_type == "Sandbox.Timedout":
                raise _Refused("INTEGRATION_TIMEOUT") from None
            raise _Refused("INTEGRATION_FAILURE") from None
        return _http_reply(reply)

    def _method_arn(self, event: dict) -> str:
        stage = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:local/{self.api.stage}"
        return f"{stage}/{event['httpMethod']}{event['path']}"

    def _authorize(self, authorizer: Authorizer, name: str, event: dict) -> dict:
        """The authorizer's context for this request, or _Refused as API Gateway refuses it."""
        identity = tuple(_identity_value(source, event) for source in authorizer.identity_sources)
        if any(not value for value in identity):
            raise _Refused("UNAUTHORIZED")
        method_arn = self._method_arn(event)
        cache_key = (name, identity)
        cached = None
        if authorizer.ttl > 0 and identity:
            with self._lock:
                hit = self._auth_cache.get(cache_key)
            if hit and hit[0] > time.monotonic():
                cached = hit[1]
        result = cached
        if result is None:
            if authorizer.kind == "token":
                request = {"type": "TOKEN", "authorizationToken": identity[0], "methodArn": method_arn}
            else:
                request = {"type": "REQUEST", "methodArn": method_arn} | {
                    k: event[k]
                    for k in (
                        "resource",
                        "path",
                        "httpMethod",
                        "headers",
                        "multiValueHeaders",
                        "queryStringParameters",
                        "multiValueQueryStringParameters",
                        "pathParameters",
                        "stageVariables",
                        "requestContext",
                    )
                }
            with self._lock:
                self.authorizer_calls += 1
            try:
                result = self.runtime.invoke(authorizer.function, request)
            except FunctionError as exc:
                if exc.message == "Unauthorized":
                    raise _Refused("UNAUTHORIZED") from None
                raise _Refused("AUTHORIZER_FAILURE") from None
            if not isinstance(result, dict) or "principalId" not in result or "policyDocument" not in result:
                raise _Refused("AUTHORIZER_CONFIGURATION_ERROR")
            if authorizer.ttl > 0 and identity:
                with self._lock:
                    self._auth_cache[cache_key] = (time.monotonic() + authorizer.ttl, result)
        verdict = _policy_verdict(result["policyDocument"], method_arn)
        if verdict == "Deny":
            raise _Refused("ACCESS_DENIED")
        if verdict != "Allow":
            raise _Refused("ACCESS_DENIED", "User is not authorized to access this resource")
        context = {
            k: v for k, v in (result.get("context") or {}).items() if isinstance(v, (str, int, float, bool))
        }
        context["principalId"] = result["principalId"]
        if result.get("usageIdentifierKey"):
            context["usageIdentifierKey"] = result["usageIdentifierKey"]
        return context

    def _gateway_response(self, kind: str, message: str | None = None) -> tuple[int, dict, bytes]:
        status, default_message = DEFAULTS[kind]
        message = message if message is not None else default_message
        response = self.api.gateway_responses.get(kind) or self.api.gateway_responses.get(
            "DEFAULT_5XX" if status >= 500 else "DEFAULT_4XX"
        )
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": _error_type(kind)}
        template = response.templates.get("application/json") if response else None
        if response:
            status = response.status or status
            headers.update(response.headers)
        if template is None:
            return status, headers, json.dumps({"message": message}).encode()
        text = template.replace("$context.error.messageString", json.dumps(message))
        text = text.replace("$context.error.message", message or "")
        return status, headers, text.encode()

    def _event(self, method, path, query, resource, path_params, headers, body) -> dict:
        multi_query = parse_qs(query, keep_blank_values=True)
        header_map = {name: value for name, value in headers.items()}
        binary = bool(body) and _is_binary(headers.get("Content-Type", ""), self.api.binary_media_types)
        if binary:
            text = base64.b64encode(body).decode()
        else:
            text = body.decode("utf-8", errors="replace") if body else None
        return {
            "resource": resource,
            "path": path,
            "httpMethod": method,
            "headers": header_map,
            "multiValueHeaders": {name: headers.get_all(name) for name in header_map},
            "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
            "multiValueQueryStringParameters": multi_query or None,
            "pathParameters": path_params or None,
            "stageVariables": None,
            "requestContext": {
                "accountId": ACCOUNT,
                "apiId": "local",
                "resourcePath": resource,
                "httpMethod": method,
                "path": f"/{self.api.stage}{path}",
                "stage": self.api.stage,
                "requestId": str(uuid.uuid4()),
                "requestTimeEpoch": int(time.time() * 1000),
                "identity": {"apiKey": None, "apiKeyId": None, "sourceIp": "127.0.0.1"},
            },
            "body": text,
            "isBase64Encoded": binary,
        }


def _identity_value(source: str, event: dict) -> str | None:
    """An identity source's value in the request: method.request.header.X, .querystring.X, context.X."""
    if source.startswith("method.request.header."):
        name = source.split(".", 3)[3].lower()
        return next((v for k, v in event["headers"].items() if k.lower() == name), None)
    if source.startswith("method.request.querystring."):
        return (event["queryStringParameters"] or {}).get(source.split(".", 3)[3])
    if source.startswith("context."):
        value = event["requestContext"]
        for part in source.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        return value
    return None


def _policy_verdict(policy: dict, method_arn: str) -> str | None:
    """'Deny' if a statement denies execute-api:Invoke on the method, else 'Allow' if one allows it."""
    verdict = None
    statements = policy.get("Statement", [])
    for statement in statements if isinstance(statements, list) else [statements]:
        actions = statement.get("Action", [])
        resources = statement.get("Resource", [])
        actions = [actions] if isinstance(actions, str) else actions
        resources = [resources] if isinstance(resources, str) else resources
        if not any(fnmatch.fnmatchcase("execute-api:Invoke", a) for a in actions):
            continue
        if not any(fnmatch.fnmatchcase(method_arn, r) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return "Deny"
        if statement.get("Effect") == "Allow":
            verdict = "Allow"
    return verdict


def _is_binary(content_type: str, binary_types: list[str]) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return bool(media) and any(fnmatch.fnmatchcase(media, t.lower()) for t in binary_types)


def _error_type(kind: str) -> str:
    return {"UNAUTHORIZED": "UnauthorizedException", "ACCESS_DENIED": "AccessDeniedException"}.get(
        kind, "ForbiddenException" if kind in ("MISSING_AUTHENTICATION_TOKEN", "INVALID_API_KEY") else kind
    )


def _http_reply(reply) -> tuple[int, dict, bytes]:
    if not isinstance(reply, dict) or "statusCode" not in reply:
        raise _Refused("INTEGRATION_FAILURE")
    headers = dict(reply.get("headers") or {})
    for name, values in (reply.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(values)
    body = reply.get("body") or ""
    raw = base64.b64decode(body) if reply.get("isBase64Encoded") else body.encode()
    return int(reply["statusCode"]), headers, raw
