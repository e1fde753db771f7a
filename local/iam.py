"""IAM on the local stack: every function calls AWS as its own role, and its role's policies decide.

moto can check requests against IAM policies (INITIAL_NO_AUTH_ACTION_COUNT), but only by action for
most services: it passes a resource only for S3 and SQS, so a policy scoped to a table, topic, secret,
state machine or function (every policy of this template) matches nothing and denies everything; it
checks TransactWriteItems as one action where DynamoDB checks each item's; and it demands a signature
of an IAM-known key from every client, the emulator's own included. So the local stack authorizes
here instead, for every service, in the emulator's request path (local/aws_emulator.py):

- each function's role is the translated template's (AWS::IAM::Role: inline policies and managed
  policies, the latter's documents from moto's copy of AWS's), created in moto's IAM; its credentials
  come from moto's STS AssumeRole, and the local runtime signs the function's requests with them;
- a request signed with a function's credentials (header or presigned URL) is mapped to the IAM
  actions and resource ARNs AWS authorizes it by (TransactWriteItems: each item's action on its table;
  SendMessageBatch: sqs:SendMessage; CopyObject: s3:GetObject on the source and s3:PutObject on the
  target; HeadObject: s3:GetObject; ...), and each is evaluated against the role's statements (explicit
  Deny wins, then Allow; Action/NotAction and Resource/NotResource with * and ? wildcards). A request
  not allowed is answered as AWS answers it (AccessDenied in the service's error format) and recorded;
- a state machine's Lambda tasks are invoked with its own role's credentials (local/runtime.py);
- requests with any other credentials (tests, the emulator's event sources and notifications, a user's
  aws CLI) are the operator's and are not restricted.

With XJOBS_IAM_USAGE_LOG set to a file path, each allowed (principal, action, resource) is appended to
it once per stack as a JSON line: what the functions really call, to keep their policies to that.

Not evaluated: statements with a Condition (left out, so such an Allow grants nothing), resource-based
policies (the bucket's TLS-only policy, Lambda permissions), permission boundaries and SCPs.
"""

import functools
import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

DYNAMODB_TRANSACT_ACTIONS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
# Batch APIs that IAM authorizes as their single-entry action.
BATCH_ACTIONS = {
    "sqs": {
        "SendMessageBatch": "SendMessage",
        "DeleteMessageBatch": "DeleteMessage",
        "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
    },
    "sns": {"PublishBatch": "Publish"},
}
# Services whose SigV4 signing name is not their IAM prefix.
IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses", "execute-api": "execute-api"}
_CREDENTIAL_KEY = re.compile(r"Credential=([^/,\s]+)/")


@dataclass
class Principal:
    name: str  # logical id of the function or state machine
    role: str  # the role's logical id
    statements: list[dict]
    _rules: list = field(init=False, repr=False)
    _decided: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        self._rules = [_compiled(statement) for statement in self.statements if "Condition" not in statement]

    def allows(self, action: str, resource: str) -> bool:
        """IAM's evaluation of identity policies: an explicit Deny wins, else any Allow (memoized: the
        emulator asks for the same table, queue or topic on most requests)."""
        key = (action, resource)
        decided = self._decided.get(key)
        if decided is None:
            decided = _evaluate(self._rules, action, resource)
            if len(self._decided) > 50_000:
                self._decided.clear()
            self._decided[key] = decided
        return decided


@dataclass(frozen=True, order=True)
class Call:
    principal: str  # logical id of the function or state machine
    action: str
    resource: str


@dataclass
class Authorizer:
    """Decides the requests signed with a function's (or state machine's) role credentials; records
    every one it decided."""

    region: str
    account: str
    principals: dict[str, Principal] = field(default_factory=dict)  # access key id -> principal
    secret_arns: dict[str, str] = field(default_factory=dict)  # secret name -> ARN
    calls: Counter = field(default_factory=Counter)  # Call -> requests allowed
    denied: Counter = field(default_factory=Counter)  # Call -> requests refused
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, environ: dict, service: str, body: bytes) -> tuple[str, list, bytes] | None:
        """None if the request may go on; else the (status, headers, body) of AWS's refusal."""
        principal = self.principals.get(access_key_id(environ))
        if principal is None:
            return None
        refused = None
        for action, resource in requested(self, environ, service, body):
            call = Call(principal.name, action, resource)
            ok = principal.allows(action, resource)
            with self._lock:
                (self.calls if ok else self.denied)[call] += 1
                if ok and self.calls[call] == 1 and os.environ.get("XJOBS_IAM_USAGE_LOG"):
                    with open(os.environ["XJOBS_IAM_USAGE_LOG"], "a") as log:
                        log.write(json.dumps([call.principal, call.action, call.resource]) + "\n")
            if not ok and refused is None:
                refused = call
        if refused is None:
            return None
        return access_denied(service, environ, refused, principal, self.account)

    def table_arn(self, name: str) -> str:
        return (
            name if name.startswith("arn:") else f"arn:aws:dynamodb:{self.region}:{self.account}:table/{name}"
        )

    def report(self) -> list[str]:
        """The refused calls, one line each: function, action, resource, how many times."""
        with self._lock:
            return [
                f"{c.principal}: {c.action} on {c.resource} denied ({n}x)"
                for c, n in sorted(self.denied.items())
            ]


def access_key_id(environ: dict) -> str | None:
    found = _CREDENTIAL_KEY.search(environ.get("HTTP_AUTHORIZATION", ""))
    if found:
        return found.group(1)
    query = parse_qs(environ.get("QUERY_STRING", ""))
    credential = query.get("X-Amz-Credential", [""])[0]
    if credential:
        return credential.split("/")[0]
    return query.get("AWSAccessKeyId", [None])[0]  # a SigV2 presigned URL


def requested(auth: Authorizer, environ: dict, service: str, body: bytes) -> list[tuple[str, str]]:
    """(IAM action, resource ARN) of everything the request needs permission for."""
    region, account = auth.region, auth.account
    if service == "s3":
        return _s3(environ)
    if service == "lambda":
        return _lambda(environ, region, account)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    params = _json(body) if target else _form(environ, body)
    action = target.rpartition(".")[2] if target else params.get("Action", "")
    if not action:
        return [(f"{service}:{environ.get('REQUEST_METHOD')} {environ.get('PATH_INFO')}", "*")]
    if service == "dynamodb":
        return _dynamodb(auth, action, params)
    action = BATCH_ACTIONS.get(service, {}).get(action, action)
    if service == "sqs":
        url = params.get("QueueUrl") or ""
        name = url.rstrip("/").rsplit("/", 1)[-1] if url else params.get("QueueName")
        return [(f"sqs:{action}", f"arn:aws:sqs:{region}:{account}:{name}" if name else "*")]
    if service == "sns":
        return [(f"sns:{action}", params.get("TopicArn") or params.get("TargetArn") or "*")]
    if service == "secretsmanager":
        secret = params.get("SecretId")
        return [(f"secretsmanager:{action}", auth.secret_arns.get(secret, secret) if secret else "*")]
    if service == "states":
        return [(f"states:{action}", params.get("stateMachineArn") or params.get("executionArn") or "*")]
    return [(f"{IAM_PREFIX.get(service, service)}:{action}", "*")]


def _dynamodb(auth: Authorizer, action: str, params: dict) -> list[tuple[str, str]]:
    if action in ("TransactWriteItems", "TransactGetItems"):
        return [
            (f"dynamodb:{DYNAMODB_TRANSACT_ACTIONS[kind]}", auth.table_arn(part["TableName"]))
            for entry in params.get("TransactItems", [])
            for kind, part in entry.items()
        ]
    if action in ("BatchWriteItem", "BatchGetItem"):
        return [(f"dynamodb:{action}", auth.table_arn(table)) for table in params.get("RequestItems", {})]
    table = params.get("TableName")
    if not table:
        return [(f"dynamodb:{action}", "*")]
    arn = auth.table_arn(table)
    if params.get("IndexName"):
        arn += f"/index/{params['IndexName']}"
    return [(f"dynamodb:{action}", arn)]


def _s3(environ: dict) -> list[tuple[str, str]]:
    method = environ.get("REQUEST_METHOD", "GET")
    bucket, _, key = unquote(environ.get("PATH_INFO", "/")).lstrip("/").partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if not bucket:
        return [("s3:ListAllMyBuckets", "*")]
    bucket_arn = f"arn:aws:s3:::{bucket}"
    if not key:
        if method == "GET" and not set(query) - {
            "list-type",
            "prefix",
            "delimiter",
            "max-keys",
            "marker",
            "continuation-token",
            "start-after",
            "encoding-type",
        }:
            return [("s3:ListBucket", bucket_arn)]
        if method == "POST" and "delete" in query:
            return [("s3:DeleteObject", f"{bucket_arn}/*")]
        sub = "".join(name.title() for name in sorted(query)) or "Bucket"
        return [(f"s3:{method.title()}Bucket{sub}", bucket_arn)]
    object_arn = f"{bucket_arn}/{key}"
    if method in ("GET", "HEAD"):
        if "uploadId" in query:
            return [("s3:ListMultipartUploadParts", object_arn)]
        return [("s3:GetObjectTagging" if "tagging" in query else "s3:GetObject", object_arn)]
    if method == "DELETE":
        return [("s3:AbortMultipartUpload" if "uploadId" in query else "s3:DeleteObject", object_arn)]
    if method == "PUT" and "tagging" in query:
        return [("s3:PutObjectTagging", object_arn)]
    needed = [("s3:PutObject", object_arn)]  # PutObject, UploadPart, Create/CompleteMultipartUpload
    source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
    if method == "PUT" and source:
        needed.append(("s3:GetObject", "arn:aws:s3:::" + unquote(source).lstrip("/").split("?")[0]))
    return needed


def _lambda(environ: dict, region: str, account: str) -> list[tuple[str, str]]:
    path = unquote(environ.get("PATH_INFO", ""))
    found = re.match(r"^/[\d-]+/functions/([^/]+)/invocations$", path)
    if not found:
        return [(f"lambda:{environ.get('REQUEST_METHOD')} {path}", "*")]
    name = found.group(1)
    arn = name if name.startswith("arn:") else f"arn:aws:lambda:{region}:{account}:function:{name}"
    return [("lambda:InvokeFunction", arn)]


def _json(body: bytes) -> dict:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {}


def _form(environ: dict, body: bytes) -> dict:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        query = {**query, **parse_qs(body.decode("utf-8", "replace"))}
    return {name: values[0] for name, values in query.items()}


# ---- policy evaluation -------------------------------------------------------------------------------
# A statement as (effect, action pattern, Action or NotAction, resource pattern, Resource or NotResource).
# Statements with a Condition are left out: nothing here knows the request's context keys.
def _compiled(statement: dict) -> tuple:
    negate_action = "Action" not in statement
    negate_resource = "Resource" not in statement
    actions = _list(statement.get("NotAction" if negate_action else "Action"))
    resources = _list(statement.get("NotResource" if negate_resource else "Resource"))
    return (
        statement.get("Effect"),
        _pattern(actions, case=False),
        negate_action,
        _pattern(resources, case=True),
        negate_resource,
    )


def _evaluate(rules: list[tuple], action: str, resource: str) -> bool:
    allowed = False
    for effect, actions, negate_action, resources, negate_resource in rules:
        if (actions.match(action) is None) != negate_action:
            continue
        if (resources.match(resource) is None) != negate_resource:
            continue
        if effect == "Deny":
            return False
        allowed = True
    return allowed


def _pattern(patterns: list, case: bool) -> re.Pattern:
    """IAM wildcards (* any characters, / included; ? one character; nothing else special), one regex."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    alternatives = "|".join(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in str(p)) for p in patterns
    )
    return re.compile(f"(?:{alternatives})\\Z", 0 if case else re.IGNORECASE)


def _list(value) -> list:
    return value if isinstance(value, list) else [] if value is None else [value]


def statements_of(role: dict, managed_documents: dict[str, dict]) -> list[dict]:
    """Every statement of a resolved AWS::IAM::Role's inline and managed policies."""
    documents = [policy["PolicyDocument"] for policy in role.get("Policies", [])]
    for arn in role.get("ManagedPolicyArns", []):
        name = arn.rsplit("/", 1)[-1]
        if name not in managed_documents:
            raise KeyError(f"no document for the managed policy {arn}")
        documents.append(managed_documents[name])
    return [statement for document in documents for statement in _list(document.get("Statement"))]


@functools.cache
def aws_managed_documents() -> dict[str, dict]:
    """AWS's managed policies by name, as moto ships them."""
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    return {name: spec["Document"] for name, spec in json.loads(aws_managed_policies_data).items()}


# ---- refusals, as each protocol answers them -----------------------------------------------------------
def access_denied(service: str, environ: dict, call: Call, principal: Principal, account: str):
    who = f"arn:aws:sts::{account}:assumed-role/{principal.role}/{principal.name}"
    message = f"User: {who} is not authorized to perform: {call.action} on resource: {call.resource}"
    if service == "s3":
        body = f"<Error><Code>AccessDenied</Code><Message>{message}</Message></Error>"
        return "403 Forbidden", [("Content-Type", "application/xml")], body.encode()
    if service == "lambda":
        headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", "AccessDeniedException")]
        return "403 Forbidden", headers, json.dumps({"Message": message}).encode()
    if environ.get("HTTP_X_AMZ_TARGET"):
        code = "AccessDenied" if service == "sqs" else "AccessDeniedException"
        headers = [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-query-error", f"{code};Sender")]
        return "400 Bad Request", headers, json.dumps({"__type": code, "message": message}).encode()
    code = "AuthorizationError" if service == "sns" else "AccessDenied"
    body = (
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
        "<RequestId>local</RequestId></ErrorResponse>"
    )
    return "403 Forbidden", [("Content-Type", "text/xml")], body.encode()
