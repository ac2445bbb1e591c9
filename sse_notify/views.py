"""The HTTP endpoints: a thin layer over :mod:`~sse_notify.extension` and the hub."""

from __future__ import annotations

import functools
import hashlib
import os
import time
import typing as t

import orjson
from flask import Blueprint, Response, abort, jsonify, render_template, request
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge, UnsupportedMediaType

from . import telemetry
from .delivery import (
    NO_OPTIONS,
    OPTIONS,
    SUPPRESSED,
    Options,
    Receipt,
    checked_options,
    checked_seconds,
    parse_time,
)
from .errors import (
    BrokerError,
    InvalidField,
    InvalidNotice,
    InvalidOption,
    InvalidUserId,
    NoticeNotFound,
    PayloadTooLarge,
    RateLimited,
    SSENotifyError,
)
from .notices import TOPIC_MARK, checked_topic, checked_user_id, loads, parse_flag
from .service import State, get_state
from .streaming import open_stream

__all__ = ["bp", "error_response", "http_error_response"]

F = t.TypeVar("F", bound=t.Callable[..., t.Any])


def _template_folder() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "templates")  # in an installed wheel
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "templates")


bp = Blueprint("sse_notify", __name__, template_folder=_template_folder())


def error_response(status: int, error: str, detail: str) -> tuple[Response, int]:
    """The JSON body of every error: ``{"error": ..., "detail": ...}``."""
    return jsonify(error=error, detail=detail), status


def http_error_response(exc: HTTPException) -> tuple[Response, int]:
    """An HTTP error as JSON, keeping its headers (``Allow`` of a 405)."""
    name = (exc.name or "error").lower().replace(" ", "_")
    response, status = error_response(exc.code or 500, name, exc.description or "")
    for key, value in exc.get_headers():
        if key.lower() != "content-type":
            response.headers[key] = value
    return response, status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[Response, int]:
    # Errors our own views raise are JSON, also inside a host app.
    return http_error_response(exc)


@bp.errorhandler(SSENotifyError)
def _error(exc: SSENotifyError) -> tuple[Response, int]:
    # Every error of ours carries its status and code (errors.py).
    response, status = error_response(exc.http_status, exc.error_code, str(exc))
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="sse_notify"'
    if isinstance(exc, RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response, status


def publisher(view: F) -> F:
    """Require a publish key (and count it against its rate limit) before the view runs."""

    @functools.wraps(view)
    def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
        get_state().security.check_publisher(request)
        return view(*args, **kwargs)

    return t.cast(F, wrapper)


def _read_body(limit: int) -> bytes:
    """The request body, refusing (413) one over ``limit`` bytes, chunked bodies included.

    (Werkzeug's own limit silently cuts a chunked body at the limit.)
    """
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit} bytes", limit)
    environ = request.environ
    if length is not None and "HTTP_TRANSFER_ENCODING" not in environ:
        # The common case, read straight from the server's input: a known length within both
        # limits (werkzeug's stream would wrap the input in a LimitedStream first; about 2 % of
        # a publish, bench/limit.py).
        most = request.max_content_length
        if most is not None and length > most:
            raise RequestEntityTooLarge()
        body = environ["wsgi.input"].read(length) if length else b""
        if len(body) != length:
            raise BadRequest(f"the body ended after {len(body)} of its {length} bytes")
        return t.cast(bytes, body)
    stream = request.stream  # (which honours the app's MAX_CONTENT_LENGTH too)
    want = limit + 1 if length is None else length  # a known length: no read past it
    parts: list[bytes] = []
    size = 0
    while size < want:
        part = stream.read(min(65536, want - size))
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > limit:
        raise PayloadTooLarge(f"the body is larger than the limit of {limit} bytes", limit)
    return b"".join(parts)


def _json_body(limit: int) -> t.Any:
    if not request.is_json:
        raise UnsupportedMediaType(
            f"send the body as JSON with Content-Type: application/json (got {request.mimetype or 'none'})"
        )
    raw = _read_body(limit)
    try:
        return loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise BadRequest("body is not accepted: JSON nested too deeply") from None


def _options(values: t.Mapping[str, t.Any], where: str = "") -> Options:
    """The delivery options among ``values`` (a query, or a batch item), checked."""
    return checked_options(values, now=time.time(), where=where)


def _query_options(ignore: t.Sequence[str] = ()) -> Options:
    """The delivery options of a single publish: its query parameters (no others but ``ignore``)."""
    if not request.environ.get("QUERY_STRING") or not request.args:  # (most publishes: no query to parse)
        return NO_OPTIONS
    for name in request.args:
        if name in ignore:
            continue
        if name not in OPTIONS:
            raise InvalidOption(f"unknown option {name!r} (options: {', '.join(OPTIONS)})", name)
        if len(request.args.getlist(name)) > 1:
            raise InvalidOption(f"{name} is given more than once", name)
    return _options({k: v for k, v in request.args.items() if k not in ignore})


def _publish(state: State, items: list[tuple[str | None, t.Any, Options]], single: bool) -> Response:
    """Deliver the notices (once per ``Idempotency-Key``, when the request has one).

    201 with a receipt per notice (the stored notice, or what waits), or 200 when nothing
    was stored (every notice suppressed by its user's preferences).
    """
    key = request.headers.get("Idempotency-Key")
    receipts, replayed = state.deliver(items, idempotency_key=key)
    return _answer(receipts, replayed, single)


def _answer(receipts: list[Receipt], replayed: bool, single: bool) -> Response:
    """201 with the receipts (one, or a list), or 200 when nothing was stored."""
    body = orjson.dumps(receipts[0].fields() if single else [r.fields() for r in receipts])
    stored = any(r.status != SUPPRESSED for r in receipts)
    response = Response(body, status=201 if stored else 200, content_type="application/json")
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("/")
def index() -> str:
    """The demo page: watch a user's stream and send notices."""
    channels = get_state().settings.fallback_channels  # (the preferences panel shows them)
    return render_template("sse_notify/index.html", channels=channels)  # namespaced: a host may have its own


#: The browser client and its service worker, shipped inside the package.
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@functools.cache
def _script(name: str) -> tuple[bytes, str]:
    if name == "sse-notify.mjs":
        body = _module(_script("sse-notify.js")[0])
    else:
        with open(os.path.join(STATIC, name), "rb") as f:
            body = f.read()
    return body, hashlib.sha256(body).hexdigest()[:16]


#: How sse-notify.js starts and ends its one function (the ES module calls it, instead of the global).
_OPENING = b"(function (root, exports) {"
_CALL = b'})(typeof self !== "undefined" ? self : this, typeof self !== "undefined" ? self : this);'


def _module(script: bytes) -> bytes:
    """sse-notify.js as an ES module: the same code, its API exported instead of set as a global."""
    if script.count(_OPENING) != 1 or script.count(_CALL) != 1:
        raise RuntimeError("sse-notify.js no longer starts and ends as _module expects")
    return script.replace(_OPENING, b"const SSENotify = " + _OPENING).replace(
        _CALL,
        b"})(globalThis, {});\nexport default SSENotify;\n"
        b"export const { version, connect, groupLabel, HttpError } = SSENotify;",
    )


def _serve_script(name: str, mimetype: str = "text/javascript") -> Response:
    body, etag = _script(name)
    response = Response(body, mimetype=mimetype)
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = 300
    return response.make_conditional(request)  # type: ignore[return-value]


@bp.get("/sse-notify.js")
def client_script() -> Response:
    """The browser client: one connection per user across tabs, read state, token renewal."""
    return _serve_script("sse-notify.js")


@bp.get("/sse-notify.mjs")
def client_module() -> Response:
    """The browser client as an ES module: ``import SSENotify, { connect } from "/sse-notify.mjs"``."""
    return _serve_script("sse-notify.mjs")


@bp.get("/sse-notify.d.ts")
def client_types() -> Response:
    """The TypeScript declarations of the client (for the script tag and the ES module alike)."""
    return _serve_script("sse-notify.d.ts", "application/typescript")


@bp.get("/sse-notify-sw.js")
def service_worker() -> Response:
    """The service worker that shows Web Push messages (its scope: where the endpoints are mounted)."""
    return _serve_script("sse-notify-sw.js")


@bp.get("/connection/<user_id>")
def connection(user_id: str) -> Response:
    """The user's event stream (``text/event-stream``), resumable with ``Last-Event-ID``."""
    stream = open_stream(get_state(), request, user_id)
    return Response(stream.body, headers=stream.headers)


@bp.post("/users/<user_id>/notices")
@publisher
def publish(user_id: str) -> Response:
    """Store a notice for one user, deliver it, answer 201 with it."""
    return _publish_one(checked_user_id(user_id))


@bp.post("/broadcast")
@publisher
def publish_broadcast() -> Response:
    """Store a notice for every user, deliver it, answer 201 with it."""
    return _publish_one(None)


@bp.post("/topics/<topic>/notices")
@publisher
def publish_topic(topic: str) -> Response:
    """Store a notice for the streams that follow a topic, deliver it, answer 201 with it.

    With ``?inbox=true``: deliver it to each follower of the topic as their own notice instead.
    """
    checked_topic(topic)
    inbox = request.args.get("inbox")
    if inbox is None:
        return _publish_one(TOPIC_MARK + topic)
    flag = parse_flag(inbox)
    if flag is None:
        raise InvalidOption(f"inbox must be true or false, got {inbox!r}", "inbox")
    state = get_state()
    options = _query_options(ignore=("inbox",))
    body = _json_body(state.settings.max_body)
    if not flag:
        return _publish(state, [(TOPIC_MARK + topic, body, options)], single=True)
    key = request.headers.get("Idempotency-Key")
    receipts, replayed = state.notify_followers(topic, body, options, idempotency_key=key)
    return _answer(receipts, replayed, single=False)


@bp.route("/topics/<topic>/followers", methods=["GET"])
@publisher
def followers(topic: str) -> Response:
    """The users who follow a topic (each gets its ``inbox=true`` notices in their inbox)."""
    return jsonify(topic=topic, followers=get_state().followers(topic))


@bp.route("/topics/<topic>/followers/<user_id>", methods=["PUT", "DELETE"])
@publisher
def follower(topic: str, user_id: str) -> tuple[Response, int]:
    """Make a user follow a topic (``PUT``: 201, or 200 if they did), or no longer (``DELETE``: 204, 404)."""
    state = get_state()
    if request.method == "PUT":
        existed = state.set_follower(topic, user_id, True)
        return jsonify(topic=topic, user_id=user_id, following=True), 200 if existed else 201
    if not state.set_follower(topic, user_id, False):
        raise NoticeNotFound(f"{user_id!r} does not follow the topic {topic!r}")
    return Response(status=204), 204


def _publish_one(recipient: str | None) -> Response:
    """One notice from the body (options from the query) for a user, ``#<topic>``, or (``None``) everyone."""
    state = get_state()
    options = _query_options()
    return _publish(state, [(recipient, _json_body(state.settings.max_body), options)], single=True)


@bp.post("/notices")
@publisher
def publish_batch() -> Response:
    """Deliver a list of ``{"user_id", "data", options...}``; what is delivered now is one transaction."""
    state = get_state()
    body = _json_body(state.settings.max_batch_body)
    if not isinstance(body, list) or not body:
        raise InvalidNotice('body must be a non-empty JSON list of {"user_id": ..., "data": {...}}')
    items: list[tuple[str | None, t.Any, Options]] = []
    for index, item in enumerate(body):
        where = f"notice {index}: "
        if not isinstance(item, dict) or not {"user_id", "data"} <= set(item):
            raise InvalidNotice(f'{where}must be an object with "user_id" and "data" (and options)')
        unknown = set(item) - {"user_id", "data", *OPTIONS}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidOption(f"{where}unknown key {name!r} (options: {', '.join(OPTIONS)})", name)
        if not isinstance(item["user_id"], str):
            raise InvalidUserId(
                f"{where}user_id must be a string (use /broadcast for everyone)", item["user_id"]
            )
        items.append((item["user_id"], item["data"], _options(item, where)))
    return _publish(state, items, single=False)


def _inbox_reader(user_id: str) -> None:
    """The user's own token (as for their stream) or a publish key may read and mark the inbox."""
    checked_user_id(user_id)
    get_state().security.check_owner(request, user_id)


def _int_arg(name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, got {raw!r}")
    return int(raw)


def _bool_arg(name: str) -> bool:
    raw = request.args.get(name, "false")
    flag = parse_flag(raw)
    if flag is None:
        raise BadRequest(f"{name} must be true or false, got {raw!r}")
    return flag


@bp.get("/users/<user_id>/notices")
def inbox(user_id: str) -> Response:
    """A page of the user's inbox, newest first, with the unread count."""
    _inbox_reader(user_id)
    state = get_state()
    page = state.inbox(
        user_id,
        before=_int_arg("before", None, 1, 2**63 - 1),
        limit=t.cast(int, _int_arg("limit", 20, 1, state.settings.inbox_page_max)),
        unread_only=_bool_arg("unread"),
        archived=_bool_arg("archived"),
        snoozed=_bool_arg("snoozed"),
    )
    return Response(page.to_json(), content_type="application/json")


_MARKS: dict[str, dict[str, bool]] = {
    "read": {"read": True},
    "unread": {"read": False},
    "archive": {"archived": True},
    "unarchive": {"archived": False},
}


def mark(user_id: str, notice_id: int, action: str) -> Response:
    """Mark one notice; every open stream of the user gets the change (event ``read`` or ``archive``)."""
    _inbox_reader(user_id)
    done = get_state().mark(user_id, [notice_id], **_MARKS[action])
    return jsonify(id=notice_id, **_MARKS[action], unread=done.unread)


for _action in _MARKS:  # one route each, as the OpenAPI document lists them
    bp.add_url_rule(
        f"/users/<user_id>/notices/<int:notice_id>/{_action}",
        endpoint=f"mark_{_action}",
        view_func=mark,
        methods=["POST"],
        defaults={"action": _action},
    )


@bp.post("/users/<user_id>/notices/<int:notice_id>/snooze")
def snooze(user_id: str, notice_id: int) -> Response:
    """Hide a notice until ``?until=`` (RFC 3339) or for ``?seconds=``; then it is back, unread."""
    _inbox_reader(user_id)
    seconds, until = request.args.get("seconds"), request.args.get("until")
    if (seconds is None) == (until is None):
        raise InvalidOption("give seconds or until (an RFC 3339 time), one of them", "seconds")
    if until is not None:
        due = parse_time(until, "until")
    else:
        due = time.time() + checked_seconds(seconds, "seconds")
    done = get_state().snooze(user_id, notice_id, due)
    return jsonify(id=notice_id, snoozed_until=done.until, unread=done.unread)


@bp.delete("/users/<user_id>/notices/<notice_id>")
def remove(user_id: str, notice_id: str) -> Response:
    """Cancel a notice that waits (by its ``scheduled_id``), or remove one from the inbox (by id)."""
    _inbox_reader(user_id)
    target: int | str = int(notice_id) if notice_id.isascii() and notice_id.isdigit() else notice_id
    if isinstance(target, int) and not 1 <= target < 2**63:
        raise NoticeNotFound(f"notice {notice_id} is not in {user_id}'s inbox")
    done = get_state().remove(user_id, target)
    if done is None:
        return jsonify(id=notice_id, cancelled=True)
    return jsonify(id=done.ids[0], removed=True, unread=done.unread)


@bp.route("/users/<user_id>/preferences", methods=["GET", "PUT"])
def preferences(user_id: str) -> Response:
    """The user's preferences (``GET``), or replace them (``PUT``): categories, default, quiet hours."""
    _inbox_reader(user_id)
    state = get_state()
    if request.method == "PUT":
        return jsonify(state.set_preferences(user_id, _json_object(state.settings.max_body)).to_dict())
    return jsonify(state.preference(user_id).to_dict())


@bp.route("/users/<user_id>/contacts", methods=["GET", "PUT", "DELETE"])
@publisher
def contacts(user_id: str) -> Response:
    """Where a user's fallbacks go (``{"email": ...}``): personal data, so a publish key only."""
    state = get_state()
    if request.method == "PUT":
        return jsonify(state.set_contacts(user_id, _json_body(state.settings.max_body)))
    if request.method == "DELETE":
        state.set_contacts(user_id, {})
        return Response(status=204)
    return jsonify(state.contacts(user_id))


@bp.post("/users/<user_id>/channels/email/test")
def test_email(user_id: str) -> Response:
    """Send the user a test email now (the demo page's button); once a minute per user."""
    _inbox_reader(user_id)
    return jsonify(sent=True, to=get_state().send_test_email(user_id))


@bp.get("/push/public-key")
def push_public_key() -> Response:
    """The VAPID key a page subscribes with (``applicationServerKey``); 404 when push is off."""
    return jsonify(public_key=get_state().push_public_key())


@bp.route("/users/<user_id>/push-subscriptions", methods=["POST", "DELETE"])
def push_subscriptions(user_id: str) -> Response:
    """Keep (``POST``) or forget (``DELETE``) a browser's push subscription of the user."""
    _inbox_reader(user_id)
    state = get_state()
    body = _json_body(state.settings.max_body)
    if request.method == "DELETE":
        endpoint = body.get("endpoint") if isinstance(body, dict) else None
        if not isinstance(endpoint, str):
            raise InvalidField('send {"endpoint": ...}: the subscription to forget', "endpoint")
        if not state.remove_push_subscription(user_id, endpoint):
            raise NoticeNotFound("no such push subscription for this user")
        return Response(status=204)
    endpoint, created = state.add_push_subscription(user_id, body)
    return Response(
        orjson.dumps({"endpoint": endpoint}), status=201 if created else 200, content_type="application/json"
    )


def _json_object(limit: int) -> dict[str, t.Any]:
    body = _json_body(limit)
    if not isinstance(body, dict):
        raise InvalidOption(f"preferences must be a JSON object, got {type(body).__name__}", "preferences")
    return body


@bp.post("/users/<user_id>/notices/read-all")
def mark_all_read(user_id: str) -> Response:
    """Mark everything in the user's inbox read."""
    _inbox_reader(user_id)
    done = get_state().mark_all_read(user_id)
    return jsonify(read=True, through=done.through, unread=done.unread)


@bp.get("/users/<user_id>/presence")
def presence(user_id: str) -> Response:
    """Whether the user has a stream open on any worker or host, and how many."""
    _inbox_reader(user_id)
    return jsonify(get_state().presence(user_id).to_dict())


@bp.post("/users/<user_id>/tokens")
@publisher
def token(user_id: str) -> tuple[Response, int]:
    """Issue a connection token for a user (for backends, and the demo page)."""
    checked_user_id(user_id)
    state = get_state()
    raw = request.args.get("ttl")
    try:
        ttl = state.settings.token_ttl if raw is None else int(raw)
    except ValueError:
        raise BadRequest(f"ttl must be a whole number of seconds, got {raw!r}") from None
    topics = [name for name in request.args.get("topics", "").split(",") if name]
    value = state.issue_token(user_id, ttl, topics)
    answer = {"user_id": user_id, "token": value, "expires_at": int(time.time() + ttl)}
    if topics:
        answer["topics"] = list(dict.fromkeys(topics))
    return jsonify(answer), 201


@bp.post("/users/<user_id>/kick")
@publisher
def kick(user_id: str) -> tuple[Response, int]:
    """Close every open stream of a user, on every worker."""
    get_state().kick(user_id)
    return jsonify(user_id=user_id, kicked=True), 202


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document of this API."""
    from .openapi import document

    state = get_state()
    return jsonify(document(state.settings, state.url_prefix))


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics, added up over every worker of this server (``SSE_NOTIFY_METRICS``)."""
    if not get_state().settings.metrics:
        abort(404, "metrics are turned off (SSE_NOTIFY_METRICS=false)")
    from . import metrics as prometheus

    # This worker's tallied counts first; the other workers' are at most
    # telemetry.FLUSH_SECONDS old.
    telemetry.flush()
    return Response(prometheus.render(), content_type=prometheus.CONTENT_TYPE)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 when the store answers, 503 when it does not."""
    state = get_state()
    try:
        state.broker.ping()
    except BrokerError as exc:
        telemetry.store_failed("ping", exc)
        return jsonify(status="unavailable", store="down", detail=str(exc)), 503
    return jsonify(status="ok", store="up", **state.hub.stats()), 200
