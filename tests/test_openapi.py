"""The OpenAPI document against the app: the same routes, a valid document, what the server really answers."""

from __future__ import annotations

import re
import typing as t
from datetime import datetime, timezone
from urllib.parse import unquote

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sse_notify.auth import MAX_TOKEN_TTL
from sse_notify.config import DEFAULTS, Settings
from sse_notify.notices import IDEMPOTENCY_KEY, USER_ID_PATTERN
from sse_notify.openapi import document as document_for
from sse_notify.service import get_state

from .support import PUBLISH_KEY, SECRET

METHODS = {"get", "post", "put", "patch", "delete"}


def document(prefix: str = "") -> dict[str, t.Any]:
    """The document of an app with the default settings."""
    return document_for(Settings.from_config(DEFAULTS), prefix)


#: The error statuses each operation can answer, read off its view, decorators and handlers.
PUBLISHER = {"401", "403", "429"}
ERRORS: dict[tuple[str, str], set[str]] = {
    ("get", "/"): set(),
    ("get", "/connection/{user_id}"): {"400", "401", "403"},
    ("post", "/users/{user_id}/notices"): PUBLISHER | {"400", "413", "415", "422", "500", "503"},
    ("post", "/broadcast"): PUBLISHER | {"400", "413", "415", "422", "500", "503"},
    ("post", "/topics/{topic}/notices"): PUBLISHER | {"400", "413", "415", "422", "500", "503"},
    ("get", "/topics/{topic}/followers"): PUBLISHER | {"400", "500", "503"},
    ("put", "/topics/{topic}/followers/{user_id}"): PUBLISHER | {"400", "500", "503"},
    ("delete", "/topics/{topic}/followers/{user_id}"): PUBLISHER | {"400", "404", "500", "503"},
    ("post", "/notices"): PUBLISHER | {"400", "413", "415", "422", "500", "503"},
    ("post", "/users/{user_id}/tokens"): PUBLISHER | {"400"},
    ("post", "/users/{user_id}/kick"): PUBLISHER | {"400", "500", "503"},
    ("get", "/healthz"): {"503"},
    ("get", "/metrics"): {"404"},
    ("get", "/users/{user_id}/presence"): {"400", "401", "403", "500", "503"},
    ("get", "/openapi.json"): set(),
    ("get", "/sse-notify.js"): set(),
    ("get", "/users/{user_id}/notices"): {"400", "401", "403", "500", "503"},
    ("post", "/users/{user_id}/notices/read-all"): {"400", "401", "403", "500", "503"},
    ("post", "/users/{user_id}/notices/{notice_id}/snooze"): {"400", "401", "403", "404", "500", "503"},
    ("delete", "/users/{user_id}/notices/{notice_id}"): {"400", "401", "403", "404", "409", "500", "503"},
    ("get", "/sse-notify-sw.js"): set(),
    ("get", "/sse-notify.mjs"): set(),
    ("get", "/sse-notify.d.ts"): set(),
    ("get", "/push/public-key"): {"404"},
    ("post", "/users/{user_id}/push-subscriptions"): {"400", "401", "403", "404", "413", "415", "500", "503"},
    ("delete", "/users/{user_id}/push-subscriptions"): {
        "400",
        "401",
        "403",
        "404",
        "413",
        "415",
        "500",
        "503",
    },
    ("post", "/users/{user_id}/channels/email/test"): {
        "400",
        "401",
        "403",
        "404",
        "409",
        "429",
        "500",
        "502",
        "503",
    },
    ("get", "/users/{user_id}/contacts"): {"400", "401", "403", "404", "429", "500", "503"},
    ("put", "/users/{user_id}/contacts"): {"400", "401", "403", "404", "413", "415", "429", "500", "503"},
    ("delete", "/users/{user_id}/contacts"): {"400", "401", "403", "404", "429", "500", "503"},
    ("get", "/users/{user_id}/preferences"): {"400", "401", "403", "500", "503"},
    ("put", "/users/{user_id}/preferences"): {"400", "401", "403", "413", "415", "500", "503"},
    **{
        ("post", f"/users/{{user_id}}/notices/{{notice_id}}/{action}"): {
            "400",
            "401",
            "403",
            "404",
            "500",
            "503",
        }
        for action in ("read", "unread", "archive", "unarchive")
    },
}


def operations(doc: dict[str, t.Any]) -> dict[tuple[str, str], dict[str, t.Any]]:
    """Every ``(method, path)`` of ``doc`` with its operation object."""
    return {
        (method, path): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


def routes(app: Flask) -> set[tuple[str, str]]:
    """Every ``(method, path)`` the app serves, in OpenAPI's path syntax."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {
            (method.lower(), path) for method in rule.methods or () if method not in {"HEAD", "OPTIONS"}
        }
    return found


def test_document_lists_exactly_the_routes_and_their_errors(app: Flask) -> None:
    """Every route of the app is documented, nothing else is, and each operation lists its error statuses."""
    ops = operations(document())
    assert set(ops) == routes(app)
    assert set(ERRORS) == set(ops), "update ERRORS above along with the document"
    for key, op in ops.items():
        missing = ERRORS[key] - set(op["responses"])
        assert not missing, f"{key} does not document {sorted(missing)}"
        if "{user_id}" in key[1]:
            assert "400" in op["responses"], f"{key}: a bad user id is answered 400"
        if op["security"]:
            assert {"401", "403"} <= set(op["responses"]), key


def test_document_is_valid_openapi_and_matches_the_code() -> None:
    """The document passes the OpenAPI 3.1 meta-schema, its $refs resolve, its user id rule is the code's."""
    doc = document()
    schemathesis.openapi.from_dict(document()).validate()  # raises jsonschema_rs.ValidationError

    def refs(node: t.Any) -> t.Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(doc):
        target: t.Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # KeyError: a dangling $ref
    assert doc["components"]["schemas"]["UserId"]["pattern"] == f"^{USER_ID_PATTERN.pattern}$"


def test_document_takes_its_limits_from_the_code_and_the_settings() -> None:
    """The key pattern, the token lifetime and the app's limits in the document are the server's own."""
    settings = Settings.from_config({**DEFAULTS, "SSE_NOTIFY_INBOX_PAGE_MAX": 7, "SSE_NOTIFY_MAX_BATCH": 9})
    doc = document_for(settings)
    ops = operations(doc)
    key = next(p for p in ops[("post", "/notices")]["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["pattern"] == f"^{IDEMPOTENCY_KEY.pattern}$"
    ttl = next(p for p in ops[("post", "/users/{user_id}/tokens")]["parameters"] if p["name"] == "ttl")
    assert ttl["schema"]["maximum"] == MAX_TOKEN_TTL
    limit = next(p for p in ops[("get", "/users/{user_id}/notices")]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 7
    batch = ops[("post", "/notices")]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["maxItems"] == 9


def test_document_honours_the_prefix() -> None:
    """Under a URL prefix every path moves, and nothing else changes."""
    plain, mounted = document(), document("/notify/")
    assert list(mounted["paths"]) == ["/notify" + path for path in plain["paths"]]
    assert list(mounted["paths"].values()) == list(plain["paths"].values())


def test_openapi_json_serves_the_document(app: Flask) -> None:
    """GET /openapi.json answers the document as JSON."""
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.get_json() == document_for(get_state(app).settings)


# Built from document() itself, not through /openapi.json: schemathesis.pytest.from_fixture (the
# way to load from a fixture's app) breaks on pytest 9.2, which dropped Node._nodeid. The route
# serving this same document is checked above; every request below goes to the `app` fixture.
api = schemathesis.openapi.from_dict(
    document(), config=schemathesis.Config.from_dict({"seed": 20261122, "request-timeout": 5})
)

#: Who the request claims to be; the document's own (random) credentials are one choice among them.
CREDENTIALS = st.sampled_from(["valid", "valid", "generated", "missing", "other user"])


def _authenticate(case: schemathesis.Case, credentials: str) -> None:
    """Put the chosen credentials on ``case``: a publish key, or a stream token of its user."""
    case.headers = dict(case.headers or {})
    if credentials == "generated":
        return
    if credentials == "missing":
        case.headers.pop("Authorization", None)
        case.query = {k: v for k, v in (case.query or {}).items() if k != "token"}
        case.cookies = {}
        return
    if case.operation.path != "/connection/{user_id}":
        case.headers["Authorization"] = f"Bearer {PUBLISH_KEY if credentials == 'valid' else 'not-a-key'}"
        return
    from sse_notify.auth import issue_token

    # The case holds the path parameter percent-encoded, as it goes on the wire.
    user_id = unquote(str(case.path_parameters["user_id"])) if credentials == "valid" else "someone-else"
    # 1 s: itsdangerous stamps whole seconds, so the token lives 0-1 s past now, and the
    # stream ends by itself with a `close` event instead of running forever.
    case.headers.pop("Authorization", None)  # a bearer would win over ?token=
    case.query = {**(case.query or {}), "token": issue_token(SECRET, user_id, 1)}


@api.parametrize()
@api.given(credentials=CREDENTIALS)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    # The `app` fixture is one app per operation, reused across examples on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_the_server_answers_as_documented(app: Flask, case: schemathesis.Case, credentials: str) -> None:
    """For any request the document allows (or breaks), the answer is no 5xx and matches the document.

    Write endpoints get the publish key (or none, or a wrong one). The stream gets a
    real token of its user that expires within a second, so a 200 stream ends by itself
    with its `close` event and that event is checked too; the other choices cover its
    400/401/403 paths. Status, Content-Type, headers and body are checked against the document.
    """
    _authenticate(case, credentials)
    case.call_and_validate(
        app=app,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )


CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NOTICES = "/users/{user_id}/notices"
BATCH = "/notices"
KICK = "/users/{user_id}/kick"
TOKENS = "/users/{user_id}/tokens"
STREAM = "/connection/{user_id}"
REMOVE = "/users/{user_id}/notices/{notice_id}"
PREFERENCES = "/users/{user_id}/preferences"
SNOOZE = "/users/{user_id}/notices/{notice_id}/snooze"
ALICE = {"user_id": "alice"}
QUIET_BERLIN = {"start": "22:00", "end": "07:00", "timezone": "Europe/Berlin"}
QUIET_MARS = {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus_Mons"}
BIG = {"text": "x" * 70_000}  # over SSE_NOTIFY_MAX_BODY (64 KiB)
DEEP = '{"a": ' + "[" * 1000 + "]" * 1000 + "}"  # 2 KB of valid JSON, nested past Python's recursion limit


def scenario(
    why: str,
    path: str,
    method: str,
    status: int,
    setup: str = "",
    publisher: bool = True,
    xfail: str = "",
    **fields: t.Any,
) -> t.Any:
    """One request that must get ``status``, with the case ``fields`` and the app ``setup``."""
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(
        path, method, fields, setup, publisher, status, id=f"{status} {method} {path} ({why})", marks=marks
    )


#: Requests that reach the answers a fuzzer seldom finds.
SCENARIOS = [
    scenario("slash in user id", NOTICES, "POST", 404, path_parameters={"user_id": "a/b"}, body={}),
    scenario("body too large", NOTICES, "POST", 413, path_parameters=ALICE, body=BIG),
    scenario("not JSON", NOTICES, "POST", 415, path_parameters=ALICE, body="hi", media_type="text/plain"),
    scenario("rate limited", NOTICES, "POST", 429, "rate limit", path_parameters=ALICE, body={}),
    scenario("store fails", NOTICES, "POST", 500, "store fails", path_parameters=ALICE, body={}),
    scenario("store down", NOTICES, "POST", 503, "store down", path_parameters=ALICE, body={}),
    scenario(
        "deeply nested JSON",
        NOTICES,
        "POST",
        400,
        path_parameters=ALICE,
        body={},
        data=DEEP,
    ),
    scenario("store down", "/broadcast", "POST", 503, "store down", body={}),
    scenario("empty batch", BATCH, "POST", 400, body=[]),
    scenario("data too large", BATCH, "POST", 413, body=[{"user_id": "a", "data": BIG}]),
    scenario("store down", BATCH, "POST", 503, "store down", body=[{"user_id": "a", "data": {}}]),
    scenario("ttl too long", TOKENS, "POST", 400, path_parameters=ALICE, query={"ttl": 10**9}),
    scenario(
        "ttl 0",
        TOKENS,
        "POST",
        400,
        path_parameters=ALICE,
        query={"ttl": 0},
    ),
    scenario(
        "ttl not a number",
        TOKENS,
        "POST",
        400,
        path_parameters=ALICE,
        query={"ttl": "1h"},
    ),
    scenario("store fails", KICK, "POST", 500, "store fails", path_parameters=ALICE),
    scenario("store down", KICK, "POST", 503, "store down", path_parameters=ALICE),
    scenario("store down", "/healthz", "GET", 503, "store down", publisher=False),
    scenario("slash in user id", STREAM, "GET", 404, publisher=False, path_parameters={"user_id": "a/b"}),
    scenario(
        "replay", STREAM, "GET", 200, publisher=False, path_parameters=ALICE, headers={"Last-Event-ID": "0"}
    ),
    scenario(
        "reset", STREAM, "GET", 200, publisher=False, path_parameters=ALICE, query={"last_event_id": "x"}
    ),
    scenario("scheduled", NOTICES, "POST", 201, path_parameters=ALICE, query={"delay": "60"}, body={}),
    scenario("bad send_at", NOTICES, "POST", 400, path_parameters=ALICE, query={"send_at": "soon"}, body={}),
    scenario("unknown option", NOTICES, "POST", 400, path_parameters=ALICE, query={"sendat": "1"}, body={}),
    scenario(
        "muted", NOTICES, "POST", 200, "muted", path_parameters=ALICE, query={"category": "promo"}, body={}
    ),
    scenario("quiet hours", NOTICES, "POST", 201, "quiet", path_parameters=ALICE, body={}),
    scenario(
        "options per item",
        BATCH,
        "POST",
        201,
        "muted",
        body=[
            {"user_id": "alice", "data": {}, "category": "promo"},
            {"user_id": "alice", "data": {}, "delay": 3600},
            {"user_id": "alice", "data": {}, "category": "promo", "critical": True},
        ],
    ),
    scenario("cancel", REMOVE, "DELETE", 200, "scheduled", path_parameters={**ALICE, "notice_id": "?"}),
    scenario("remove", REMOVE, "DELETE", 200, "delivered", path_parameters={**ALICE, "notice_id": "?"}),
    scenario("broadcast", REMOVE, "DELETE", 409, "broadcast", path_parameters={**ALICE, "notice_id": "?"}),
    scenario("unknown", REMOVE, "DELETE", 404, path_parameters={**ALICE, "notice_id": "s123"}),
    scenario("bad zone", PREFERENCES, "PUT", 400, path_parameters=ALICE, body={"quiet_hours": QUIET_MARS}),
    scenario("set", PREFERENCES, "PUT", 200, path_parameters=ALICE, body={"quiet_hours": QUIET_BERLIN}),
    scenario(
        "snooze",
        SNOOZE,
        "POST",
        200,
        "delivered",
        path_parameters={**ALICE, "notice_id": "?"},
        query={"seconds": "60"},
    ),
    scenario(
        "not in inbox",
        SNOOZE,
        "POST",
        404,
        path_parameters={**ALICE, "notice_id": 99},
        query={"seconds": "60"},
    ),
    scenario("no time", SNOOZE, "POST", 400, "delivered", path_parameters={**ALICE, "notice_id": "?"}),
]


@pytest.mark.parametrize(("path", "method", "fields", "setup", "publisher", "status"), SCENARIOS)
def test_each_documented_answer_is_real_and_conforms(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    method: str,
    fields: dict[str, t.Any],
    setup: str,
    publisher: bool,
    status: int,
) -> None:
    """Answers a fuzzer seldom reaches (404 413 415 429 500 503, replay, reset) are real and documented."""
    from sse_notify import broadcast, create_app, notify
    from sse_notify.auth import issue_token
    from sse_notify.errors import BrokerError

    fields = dict(fields)
    raw = {"data": fields.pop("data")} if "data" in fields else {}
    if setup == "rate limit":
        app = create_app({**app.config, "SSE_NOTIFY_RATE_LIMIT": "1/minute"})
    broker = get_state(app).broker
    if setup == "store down":
        monkeypatch.setattr(broker, "path", "/proc/no-such-dir/notices.sqlite3")
        monkeypatch.setattr(broker, "_conn", None)
    if setup == "store fails":

        def fail(*args: object) -> t.NoReturn:
            raise BrokerError("disk I/O error")

        monkeypatch.setattr(broker, "publish_many", fail)
        monkeypatch.setattr(broker, "publish_requests", fail)
        monkeypatch.setattr(broker, "publish", fail)
        monkeypatch.setattr(broker, "publish_control", fail)
    with app.app_context():
        if setup == "muted":
            get_state(app).set_preferences("alice", {"categories": {"promo": {"in_app": False}}})
        if setup == "quiet":  # quiet hours from an hour ago to an hour from now, in UTC
            now = datetime.now(timezone.utc)
            hours = {"start": f"{(now.hour - 1) % 24:02}:00", "end": f"{(now.hour + 1) % 24:02}:00"}
            get_state(app).set_preferences("alice", {"quiet_hours": {**hours, "timezone": "UTC"}})
        if setup in {"scheduled", "delivered", "broadcast"}:
            target = {
                "scheduled": lambda: notify("alice", {}, delay=60).scheduled_id,
                "delivered": lambda: notify("alice", {}).id,
                "broadcast": lambda: broadcast({}).id,
            }[setup]()
            fields["path_parameters"] = {**fields["path_parameters"], "notice_id": str(target)}
    case = api[path][method].Case(**fields)
    case.headers = dict(case.headers or {})
    if publisher:
        case.headers["Authorization"] = f"Bearer {PUBLISH_KEY}"
    if path == STREAM and status == 200:
        notify("alice", {"n": 1}, app=app)  # something to replay
        case.query = {**(case.query or {}), "token": issue_token(SECRET, "alice", 1)}
    if setup == "rate limit":
        case.call(app=app)  # spends the one request of the minute
    response = case.call_and_validate(app=app, checks=CONFORMANCE, **raw)
    assert response.status_code == status, response.text
    if path == STREAM and status == 200:  # the events were checked against StreamEvent
        expected = "event: reset" if "last_event_id" in (case.query or {}) else "event: notice"
        assert expected in response.text, response.text
        assert "event: close" in response.text, response.text
