"""API Gateway (REST API, Lambda proxy integration) on loopback, built from the translated template.

Checks `x-api-key` against the API keys held in the AWS emulator (so a key created with the aws CLI
or boto3 works at once), applies the usage plan's throttle per key, turns each request into the
proxy event API Gateway sends, and the handler's answer back into HTTP.
"""

import base64
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .cloudformation import ACCOUNT, ApiSpec
from .runtime import FunctionError, LambdaRuntime

KEY_CACHE_SECONDS = 1.0


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
        self._keys: dict[str, str] = {}
        self._keys_read = 0.0
        self._buckets: dict[str, _TokenBucket] = {}
        self._lock = threading.Lock()
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

    def _key_id(self, value: str) -> str | None:
        with self._lock:
            # A key unknown here may have just been created in the emulator: look again.
            if value not in self._keys or time.monotonic() - self._keys_read > KEY_CACHE_SECONDS:
                items = self.client.get_api_keys(includeValues=True, limit=500)["items"]
                self._keys = {k["value"]: k["id"] for k in items if k.get("enabled", True)}
                self._keys_read = time.monotonic()
            return self._keys.get(value)

    def _throttled(self, key_id: str) -> bool:
        if not self.api.rate_limit:
            return False
        with self._lock:
            bucket = self._buckets.setdefault(
                key_id, _TokenBucket(self.api.rate_limit, self.api.burst_limit or int(self.api.rate_limit))
            )
            return not bucket.take()

    def _route_throttled(self, route) -> bool:
        """The stage's MethodSettings throttle: one bucket for the route, whoever calls."""
        with self._lock:
            bucket = self._buckets.setdefault(
                f"route {route.method} {route.path}", _TokenBucket(*route.throttle)
            )
            return not bucket.take()

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        url = urlsplit(raw_path)
        path = url.path
        if path.startswith(f"/{self.api.stage}/"):
            path = path[len(self.api.stage) + 1 :]
        match = next(
            ((route, m) for verb, rx, route in self.routes if verb == method and (m := rx.match(path))), None
        )
        if match is None:
            return _message(403, "Missing Authentication Token")
        route, found = match
        key_value = headers.get("x-api-key", "")
        key_id = self._key_id(key_value) if key_value else None
        if route.api_key_required and key_id is None:
            return _message(403, "Forbidden")
        if key_id and self._throttled(key_id):
            return _message(429, "Too Many Requests")
        if route.throttle and self._route_throttled(route):
            return _message(429, "Too Many Requests")
        event = self._event(
            method, path, url.query, route.path, found.groupdict(), headers, body, key_value, key_id
        )
        try:
            reply = self.runtime.invoke(route.function, event)
        except FunctionError:
            return _message(502, "Internal server error")
        return _http_reply(reply)

    def _event(self, method, path, query, resource, path_params, headers, body, key_value, key_id) -> dict:
        multi_query = parse_qs(query, keep_blank_values=True)
        header_map = {name: value for name, value in headers.items()}
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
                "identity": {"apiKey": key_value or None, "apiKeyId": key_id, "sourceIp": "127.0.0.1"},
            },
            "body": text,
            "isBase64Encoded": False,
        }


def _message(status: int, message: str) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps({"message": message}).encode()


def _http_reply(reply) -> tuple[int, dict, bytes]:
    if not isinstance(reply, dict) or "statusCode" not in reply:
        return _message(502, "Internal server error")
    headers = dict(reply.get("headers") or {})
    for name, values in (reply.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(values)
    body = reply.get("body") or ""
    raw = base64.b64decode(body) if reply.get("isBase64Encoded") else body.encode()
    return int(reply["statusCode"]), headers, raw
