"""moto's server, with DynamoDB writes made atomic as DynamoDB makes them, and every request counted.

moto checks a ConditionExpression and then applies the write without a lock, so two concurrent
conditional writes can both pass. Everything the project builds on a conditional write (forward-only
statuses, the one SNS notice per job, the shared rate limiter) depends on DynamoDB's atomicity, so
DynamoDB requests are applied one at a time. Other services stay concurrent: a Lambda invoke must not
hold a lock while its handler calls DynamoDB.

moto makes TransactWriteItems undoable by deep-copying every table it touches, before every
transaction: time and memory grow with the table (a 10,000-request batch's results took gigabytes).
Here it keeps a copy of only the items the transaction writes, and puts those back if it fails.

Three of moto's costs are paid once instead of on every request (see _pay_moto_setup_costs_once):
with a thousand jobs in flight they took most of the process's CPU and held the DynamoDB lock for
minutes.

Transaction conflicts, on request (fault injection): DynamoDB cancels a transaction that touches an
item another transaction is writing (TransactionConflict), and refuses a single-item write to such an
item (TransactionConflictException). Requests here run one at a time, so that never happens by itself;
with ``transaction_conflict_seconds`` set, each successful TransactWriteItems holds its items that
long, as if it were still in flight, and what touches them meanwhile is refused as DynamoDB would.

Every request is counted by "service:Action" (for the cost benchmark, bench/cost.py): the service comes
from the request's SigV4 credential scope, the action from X-Amz-Target (JSON protocols: DynamoDB, SQS,
Step Functions, Secrets Manager), from the Action parameter (query protocols: SNS, SQS query) or from
the method and path (S3, Lambda, API Gateway). DynamoDB requests also add the request units on-demand
DynamoDB would bill ("dynamodb:WriteRequestUnits", "dynamodb:ReadRequestUnits"; see _Capacity).
Requests whose User-Agent contains OBSERVER (a benchmark reading the stack's state) are counted apart,
so that counts() holds only what the stack itself asked for.
"""

import io
import json
import math
import re
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.utilities import bytesize
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

OBSERVER = "xjobs-observer"  # put it in a client's user agent: Config(user_agent_extra=OBSERVER)
WRITE_UNIT_BYTES, READ_UNIT_BYTES = 1024, 4096
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d+/([^/]+)/([^/]+)/aws4_request")
_BODY_TYPES = ("application/x-amz-json", "application/x-www-form-urlencoded")


class AwsEmulator(ThreadedMotoServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _roll_back_transactions_item_by_item()
        _pay_moto_setup_costs_once()
        _enforce_post_policies()
        self._count_lock = threading.Lock()
        self._counts: Counter = Counter()
        self._observer_counts: Counter = Counter()
        self._dynamodb_lock = {"requests": 0, "wait_s": 0.0, "held_s": 0.0, "max_wait_s": 0.0}
        self.transaction_conflict_seconds = 0.0  # > 0: transactions conflict (see the module's docstring)
        self._in_flight: dict[
            tuple[str, str], float
        ] = {}  # (table, key) -> until when a transaction holds it
        self.authorizer = None  # local/iam.py's Authorizer, once the stack has its functions' roles

    def counts(self) -> dict[str, float]:
        """Requests by "service:Action" and DynamoDB request units, since the start (observers left out)."""
        with self._count_lock:
            return dict(self._counts)

    def observer_counts(self) -> dict[str, float]:
        with self._count_lock:
            return dict(self._observer_counts)

    def dynamodb_lock_seconds(self) -> dict[str, float]:
        """DynamoDB requests served, and the seconds they spent waiting for the emulator's one-at-a-time
        lock (in all, and the longest wait) and holding it."""
        with self._count_lock:
            return dict(self._dynamodb_lock)

    def _count(self, environ: dict, service: str, action: str, units: dict[str, float]) -> None:
        counts = self._observer_counts if OBSERVER in environ.get("HTTP_USER_AGENT", "") else self._counts
        with self._count_lock:
            counts[f"{service}:{action}"] += 1
            for name, value in units.items():
                counts[f"dynamodb:{name}"] += value

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        dynamodb = threading.Lock()

        def serve(environ, start_response):
            service, region = _scope(environ)
            body = _read_body(environ) if service != "s3" else b""
            refusal = self.authorizer and self.authorizer.check(environ, service, body)
            if refusal:
                status, headers, payload = refusal
                self._count(environ, service, _action(environ, service, body), {})
                start_response(status, headers + [("Content-Length", str(len(payload)))])
                return [payload]
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if not target.startswith("DynamoDB_"):
                self._count(environ, service, _action(environ, service, body), {})
                return app(environ, start_response)
            action = target.rpartition(".")[2]
            replied = []

            def start(status, headers, exc_info=None):
                replied.append(status)
                return start_response(status, headers, exc_info)

            waited = time.perf_counter()
            with dynamodb:
                started = time.perf_counter()
                capacity = _Capacity(region, action, body)
                conflict = self._conflict(action, body) if self.transaction_conflict_seconds else None
                if conflict is not None:
                    start("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0")])
                    reply = json.dumps(conflict).encode()
                else:
                    reply = b"".join(app(environ, start))
                    holds = self.transaction_conflict_seconds and action == "TransactWriteItems"
                    if holds and replied[0].startswith("200"):
                        until = time.monotonic() + self.transaction_conflict_seconds
                        for key in _transaction_keys(body):
                            self._in_flight[key] = until
                units = capacity.units(replied[0].startswith("200"), reply)
                held = time.perf_counter() - started
            with self._count_lock:
                lock = self._dynamodb_lock
                lock["requests"] += 1
                lock["wait_s"] += started - waited
                lock["held_s"] += held
                lock["max_wait_s"] = max(lock["max_wait_s"], started - waited)
            self._count(environ, service, action, units)
            return [reply]

        self._server = make_server(
            self._ip_address, self._port, serve, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    def _conflict(self, action: str, body: bytes) -> dict | None:
        """The error DynamoDB gives a write touching an item a transaction still holds, or None."""
        now = time.monotonic()
        self._in_flight = {key: until for key, until in self._in_flight.items() if until > now}
        if action == "TransactWriteItems":
            held = [key in self._in_flight for key in _transaction_keys(body)]
            if not any(held):
                return None
            reasons = [
                {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
                if h
                else {"Code": "None"}
                for h in held
            ]
            codes = ", ".join(r["Code"] for r in reasons)
            return {
                "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                "Message": f"Transaction cancelled, please refer cancellation reasons [{codes}]",
                "CancellationReasons": reasons,
            }
        if action in ("UpdateItem", "DeleteItem"):
            request = json.loads(body or b"{}")
            if _item_key(request["TableName"], request.get("Key") or {}) in self._in_flight:
                return {
                    "__type": "com.amazonaws.dynamodb.v20120810#TransactionConflictException",
                    "message": "Transaction is ongoing for the item",
                }
        return None


def _item_key(table: str, key: dict) -> tuple[str, str]:
    return table, json.dumps(key, sort_keys=True)


def _transaction_keys(body: bytes) -> list[tuple[str, str]]:
    """(table, key) of each item a TransactWriteItems request names, in its order."""
    keys = []
    for entry in json.loads(body or b"{}").get("TransactItems", []):
        for op in entry.values():
            keys.append(_item_key(op.get("TableName", ""), op.get("Key") or op.get("Item") or {}))
    return keys


def _scope(environ: dict) -> tuple[str, str]:
    """(service, region) from the SigV4 credential scope (header, or query of a presigned URL)."""
    found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", "")) or _CREDENTIAL.search(
        "Credential=" + parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    )
    if found:
        return found.group(2), found.group(1)
    return environ.get("PATH_INFO", "/").strip("/").split("/")[0] or "unsigned", ""


def _read_body(environ: dict) -> bytes:
    """The body of a JSON- or query-protocol request, put back for moto to read."""
    if not environ.get("CONTENT_TYPE", "").startswith(_BODY_TYPES):
        return b""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _action(environ: dict, service: str, body: bytes) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return target.rpartition(".")[2]
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        query = {**query, **parse_qs(body.decode("utf-8", "replace"))}
    if "Action" in query:
        return query["Action"][0]
    method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
    if service == "s3":
        return _s3_action(environ, method, path, query)
    if service == "lambda" and path.endswith("/invocations"):
        return "Invoke"
    return f"{method} {path}"


def _s3_action(environ: dict, method: str, path: str, query: dict) -> str:
    """The S3 API operation of a path-style request (the ones that are billed; others by method)."""
    bucket, _, key = path.lstrip("/").partition("/")
    if key:
        if method == "PUT":
            if "partNumber" in query:
                return "UploadPart"
            return "CopyObject" if "HTTP_X_AMZ_COPY_SOURCE" in environ else "PutObject"
        if method == "POST":
            return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)
    if method == "GET" and not set(query) - {"list-type", "prefix", "delimiter", "max-keys", "marker"}:
        return "ListObjectsV2" if "list-type" in query else "ListObjects"
    return f"{method} bucket" + "".join(f"?{name}" for name in sorted(query))


class _Capacity:
    """The request units of one DynamoDB request, as on-demand DynamoDB bills them, approximately.

    Writes: per item, the larger of its size before and after, in 1 KB units (at least 1, also when a
    condition fails); a successful write adds as much again for each global secondary index the item
    is in (taken as projecting the whole item); transactions count double. Reads: per item read, its
    size in 4 KB units (at least 1), halved unless strongly consistent; Query and Scan add up the items
    returned (DynamoDB counts the items read before a filter, so filtered reads are undercounted).
    Sizes are moto's (attribute names plus values), close to DynamoDB's.

    Made before the request runs (it notes the sizes of the items a write touches) and asked for the
    units after; both under the emulator's DynamoDB lock, so nothing changes the items in between.
    """

    def __init__(self, region: str, action: str, raw_body: bytes):
        self.action = action
        try:
            self.body = json.loads(raw_body or b"{}")
        except ValueError:
            self.body = {}
        self.tables = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables if region else {}
        self.writes = self._writes()
        self.before = [self._stored(table, key) for table, key, _ in self.writes]

    def _writes(self) -> list[tuple[str, dict, int]]:
        """(table, key or item, factor) of each item the request writes."""
        body = self.body
        if self.action == "PutItem":
            return [(body.get("TableName"), body.get("Item", {}), 1)]
        if self.action in ("UpdateItem", "DeleteItem"):
            return [(body.get("TableName"), body.get("Key", {}), 1)]
        if self.action == "BatchWriteItem":
            return [
                (table, request.get("PutRequest", {}).get("Item") or request["DeleteRequest"]["Key"], 1)
                for table, requests in body.get("RequestItems", {}).items()
                for request in requests
            ]
        if self.action == "TransactWriteItems":
            return [
                (part["TableName"], part.get("Item") or part.get("Key", {}), 2)
                for entry in body.get("TransactItems", [])
                for part in entry.values()
            ]
        return []

    def _stored(self, table_name: str, key: dict) -> tuple[int, frozenset]:
        """The size of the stored item with this key, and its attribute names ((0, {}) if none)."""
        table = self.tables.get(table_name)
        if table is None or table.hash_key_attr not in key:
            return 0, frozenset()
        range_value = key.get(table.range_key_attr) if table.range_key_attr else None
        item = table.get_item(
            DynamoType(key[table.hash_key_attr]), DynamoType(range_value) if range_value else None
        )
        return (item.size(), frozenset(item.attrs)) if item else (0, frozenset())

    def units(self, succeeded: bool, reply: bytes) -> dict[str, float]:
        if self.writes:
            return {"WriteRequestUnits": self._write_units(succeeded)}
        reads = self._read_units(reply)
        return {"ReadRequestUnits": reads} if reads else {}

    def _write_units(self, succeeded: bool) -> float:
        total = 0.0
        for (table_name, key, factor), (size_before, names_before) in zip(
            self.writes, self.before, strict=True
        ):
            size_after, names_after = self._stored(table_name, key)
            units = max(1, math.ceil(max(size_before, size_after) / WRITE_UNIT_BYTES))
            table = self.tables.get(table_name)
            if succeeded and table is not None:
                names = names_before | names_after
                indexes = sum(
                    1 for index in table.global_indexes if index.schema[0]["AttributeName"] in names
                )
                units *= 1 + indexes
            total += factor * units
        return total

    def _read_units(self, reply: bytes) -> float:
        body = self.body
        if self.action == "GetItem":
            return _read_units(
                self._stored(body.get("TableName"), body.get("Key", {}))[0], body.get("ConsistentRead")
            )
        if self.action == "BatchGetItem":
            return sum(
                _read_units(self._stored(table, key)[0], request.get("ConsistentRead"))
                for table, request in body.get("RequestItems", {}).items()
                for key in request.get("Keys", [])
            )
        if self.action == "TransactGetItems":
            return sum(
                2 * _read_units(self._stored(entry["Get"]["TableName"], entry["Get"]["Key"])[0], True)
                for entry in body.get("TransactItems", [])
            )
        if self.action in ("Query", "Scan"):
            try:
                items = json.loads(reply).get("Items", [])
            except ValueError:
                items = []
            size = sum(
                bytesize(name) + DynamoType(value).size() for item in items for name, value in item.items()
            )
            return _read_units(size, body.get("ConsistentRead"))
        return 0.0


def _read_units(size: int, consistent: bool | None) -> float:
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    return units if consistent else units / 2


_transactions_patched = False


def _enforce_post_policies() -> None:
    """S3 browser-form uploads (presigned POST) checked against their policy as S3 checks them: moto
    stores whatever is posted. The signature is not checked; expiration, content-length-range and
    the key's conditions are."""
    from moto.s3.responses import S3Response

    if getattr(S3Response, "_xjobs_post_policy", False):
        return
    original = S3Response._bucket_response_post

    def checked(self, request, bucket_name):
        encoded = (self.querystring.get("policy") or self.querystring.get("Policy") or [None])[0]
        if encoded and "key" in self.querystring:
            refusal = _post_policy_refusal(encoded, self.querystring["key"][0], len(self.body or b""))
            if refusal:
                status, code, message = refusal
                body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
                return status, {"Content-Type": "application/xml"}, body
        return original(self, request, bucket_name)

    S3Response._bucket_response_post = checked
    S3Response._xjobs_post_policy = True


def _post_policy_refusal(encoded: str, key: str, size: int) -> tuple[int, str, str] | None:
    import base64
    from datetime import UTC, datetime

    try:
        policy = json.loads(base64.b64decode(encoded))
        expires = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return 400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON."
    if expires < datetime.now(UTC):
        return 403, "AccessDenied", "Invalid according to Policy: Policy expired."
    for condition in policy.get("conditions", []):
        if isinstance(condition, list) and condition[0] == "content-length-range":
            low, high = int(condition[1]), int(condition[2])
            if size > high:
                return 400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
            if size < low:
                return 400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size"
        elif _key_condition_fails(condition, key):
            return (
                403,
                "AccessDenied",
                f"Invalid according to Policy: Policy Condition failed: {json.dumps(condition)}",
            )
    return None


def _key_condition_fails(condition, key: str) -> bool:
    if isinstance(condition, dict):
        return "key" in condition and condition["key"] != key
    if isinstance(condition, list) and len(condition) == 3 and condition[1] == "$key":
        return (condition[0] == "eq" and condition[2] != key) or (
            condition[0] == "starts-with" and not key.startswith(condition[2])
        )
    return False


def _roll_back_transactions_item_by_item() -> None:
    """moto's transact_write_items with a rollback of the items it writes (see the module's docstring).

    Safe because DynamoDB requests run one at a time (AwsEmulator's lock): while the transaction runs,
    no other request reads or deep-copies a table."""
    global _transactions_patched
    if _transactions_patched:
        return
    _transactions_patched = True
    import copy

    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    transact_write_items = DynamoDBBackend.transact_write_items

    def items_written(backend, transact_items: list[dict]) -> list[tuple]:
        """(table, hash key, range key, a copy of the stored item or None) of each item written."""
        written = []
        for entry in transact_items:
            for op in entry.values():
                table = backend.tables.get(op.get("TableName"))
                key = op.get("Item") or op.get("Key") or {}
                if table is None or table.hash_key_attr not in key:
                    continue
                hash_key = DynamoType(key[table.hash_key_attr])
                range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr in key else None
                if table.range_key_attr and range_key is None:
                    continue
                stored = table.get_item(hash_key, range_key)
                written.append((table, hash_key, range_key, copy.deepcopy(stored)))
        return written

    def patched(self, transact_items: list[dict]) -> None:
        written = items_written(self, transact_items)
        Table.__deepcopy__ = lambda table, memo: table  # moto's own rollback becomes a no-op
        try:
            transact_write_items(self, transact_items)
        except Exception:
            for table, hash_key, range_key, stored in reversed(written):
                table.delete_item(hash_key, range_key)
                if stored is not None:
                    table.put_item(stored.to_json()["Attributes"])
            raise
        finally:
            del Table.__deepcopy__

    DynamoDBBackend.transact_write_items = patched


_setup_costs_patched = False


def _pay_moto_setup_costs_once() -> None:
    """Caches for what moto rebuilds on every request although it never changes.

    - The dispatcher lists moto's package directory (~180 stat calls, each releasing the GIL) on every
      request to find its service, under its global lock, and here inside the DynamoDB lock.
    - The Step Functions interpreter builds a new boto3 client (service model, hooks, SSL context, a
      new connection) for every Lambda task attempt: one client per (region, service) instead.
    - It parses every JSONPath anew, and jsonpath_ng rebuilds its yacc parser for each parse; a parsed
      path is immutable, so one parse per path string.
    """
    global _setup_costs_patched
    if _setup_costs_patched:
        return
    _setup_costs_patched = True
    import functools
    import sys

    import botocore.session
    from botocore.config import Config
    from moto import backends
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import boto_client, json_path

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    json_path.parse = functools.lru_cache(maxsize=4096)(json_path.parse)
    result_path.parse = functools.lru_cache(maxsize=4096)(result_path.parse)

    # Many executions invoke at once through the one client: a pooled connection each, as they had.
    boto_client.Config = functools.partial(Config, max_pool_connections=1000)
    build_client = boto_client.boto_client_for
    clients: dict[tuple[str, str], object] = {}
    clients_lock = threading.Lock()

    def shared_client(region: str, service: str, state_credentials=None):
        with clients_lock:  # built once, not by every execution that starts at the same moment
            if (region, service) not in clients:
                client = build_client(region, service, state_credentials)
                # moto gives it fixed keys; the process's credential provider instead, through which the
                # local runtime signs a state machine's tasks with the state machine's role.
                client._request_signer._credentials = botocore.session.Session().get_credentials()
                clients[(region, service)] = client
            return clients[(region, service)]

    boto_client.boto_client_for = shared_client
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("moto.stepfunctions.parser")
            and getattr(module, "boto_client_for", None) is build_client
        ):
            module.boto_client_for = shared_client
