"""The OpenAPI 3.1 document of the HTTP API: the single source, kept in sync by ``tests/test_openapi.py``.

Its patterns and limits are not written here: they come from where the server checks
them (the user id and ``Idempotency-Key`` rules of ``notices.py``, the token lifetime of
``auth.py``, and the app's settings), so the document cannot drift from the server.
"""

from __future__ import annotations

import typing as t

from .auth import MAX_TOKEN_TTL
from .config import Settings
from .delivery import CHANNELS, MAX_CATEGORIES, MAX_DELAY
from .notices import EMAIL_ADDRESS, IDEMPOTENCY_KEY, TOPIC_PATTERN, TOPIC_RULE, USER_ID_PATTERN, USER_ID_RULE

__all__ = ["document"]

Schema = dict[str, t.Any]

JSON = "application/json"


#: The delivery options (``delivery.OPTIONS``): their schema in a batch item, and what they do.
_OPTIONS: dict[str, tuple[Schema, str]] = {
    "category": (
        {"type": "string", "pattern": f"^{USER_ID_PATTERN.pattern}$"},
        f"The notice's category ({USER_ID_RULE}); a user may mute it.",
    ),
    "critical": (
        {"type": ["boolean", "string"]},
        "`true`: ignores the user's mutes and quiet hours.",
    ),
    "send_at": (
        {"type": "string", "format": "date-time"},
        "Deliver at this RFC 3339 time (with its offset), not before; a past time is now.",
    ),
    "delay": (
        {"type": ["number", "string"], "minimum": 0, "maximum": MAX_DELAY},
        f"Deliver this many seconds from now (at most {MAX_DELAY}); not with `send_at`.",
    ),
    "group": (
        {"type": "string", "pattern": f"^{USER_ID_PATTERN.pattern}$"},
        "Notices to one user with the same group key fold into one inbox entry while it is unread.",
    ),
}


def _anchored(pattern: str) -> str:
    """A regular expression that must match a whole value (OpenAPI patterns may match a part)."""
    return f"^{pattern}$"


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> Schema:
    return _ref("schemas", name)


def _obj(**properties: Schema) -> Schema:
    """A closed JSON object: exactly ``properties``, every one required."""
    closed = {"required": list(properties), "additionalProperties": False}
    return {"type": "object", "properties": properties, **closed}


def _json(description: str, schema: Schema, **extra: t.Any) -> Schema:
    """A response (or request body) with a JSON body."""
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _error(description: str, codes: t.Sequence[str], **extra: t.Any) -> Schema:
    """An error response: the ``Error`` body, with the ``error`` codes it can carry."""
    codes_text = ", ".join(f"`{code}`" for code in codes)
    return _json(f"{description} (`error`: {codes_text}).", _schema("Error"), **extra)


def _header(description: str, schema: Schema) -> Schema:
    return {"description": description, "required": True, "schema": schema}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    description: str = "",
    security: list[dict[str, list[str]]] | None = None,
    parameters: t.Sequence[Schema] = (),
    body: Schema | None = None,
    tag: str = "notices",
) -> Schema:
    op: Schema = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    op["security"] = [] if security is None else security
    op["responses"] = responses
    return op


def _responses(*names: str) -> dict[str, Schema]:
    """The shared error responses called ``names`` (``"400"`` -> ``#/components/responses/400``)."""
    return {name: _ref("responses", name) for name in names}


def _delivery_fields() -> dict[str, Schema]:
    """The delivery options a notice keeps, as its JSON shows them (each only when set)."""
    return {
        "category": {"type": "string", "description": "Its category (preferences mute categories)."},
        "critical": {"const": True, "description": "It ignores mutes and quiet hours."},
        "group": {
            "type": "object",
            "properties": {
                "key": {"type": "string"},
                "count": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "How many notices this entry stands for.",
                },
                "first_at": {"type": "string", "format": "date-time"},
                "last_at": {"type": "string", "format": "date-time"},
                "recent": {
                    "type": "array",
                    "items": {"type": "object"},
                    "description": "The newest data items, newest first (at most 5).",
                },
                "replaces": {
                    "type": "integer",
                    "description": "The entry of this group it replaces: a client drops its unread entry "
                    "of this `key` (a stream that missed a fold gets only the newest entry).",
                },
            },
            "required": ["key", "count"],
            "description": "Notices to one user with the same `group` fold into one unread entry.",
        },
    }


def _preferences() -> Schema:
    channels = {
        "type": "object",
        "properties": {channel: {"type": "boolean"} for channel in CHANNELS},
        "additionalProperties": False,
        "description": "Per channel, whether the user wants it there (a channel not named: yes).",
    }
    clock = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
    return {
        "type": "object",
        "properties": {
            "categories": {
                "type": "object",
                "maxProperties": MAX_CATEGORIES,
                "propertyNames": {"pattern": _anchored(USER_ID_PATTERN.pattern)},
                "additionalProperties": channels,
                "description": 'Per category, its channels, e.g. `{"marketing": {"in_app": false}}`.',
            },
            "default": {**channels, "description": "The channels of categories not listed."},
            "quiet_hours": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "properties": {
                            "start": clock,
                            "end": clock,
                            "timezone": {
                                "type": "string",
                                "description": "An IANA zone, e.g. `Europe/Berlin`.",
                            },
                        },
                        "required": ["start", "end", "timezone"],
                        "additionalProperties": False,
                        "description": "A daily window (it may cross midnight; start and end differ) in "
                        "the user's zone, in which non-critical notices wait until it ends.",
                    },
                ]
            },
        },
        "additionalProperties": False,
        "description": "A user's preferences. A `PUT` replaces them whole; a field left out is its default.",
    }


def _schemas() -> dict[str, Schema]:
    user_id = {
        "type": "string",
        "pattern": _anchored(USER_ID_PATTERN.pattern),
        "description": f"{USER_ID_RULE}.",
    }
    notice = _obj(
        id={"type": "integer", "minimum": 1, "description": "The store's cursor: grows with every notice."},
        user_id={**user_id, "type": ["string", "null"], "description": "`null` for a broadcast."},
        created_at={
            "type": "string",
            "format": "date-time",
            "description": "UTC, with milliseconds, e.g. `2026-11-22T15:04:05.123Z`.",
        },
        data={"type": "object", "description": "The publisher's JSON object."},
    )
    topic = {
        "type": "string",
        "pattern": _anchored(TOPIC_PATTERN.pattern),
        "description": f"A topic: {TOPIC_RULE}.",
    }
    notice["properties"]["topic"] = {
        **topic,
        "description": "Set on a topic's notice (`POST /topics/{topic}/notices`); its `user_id` is `null`.",
    }
    notice["properties"].update(_delivery_fields())
    token = _obj(
        user_id=user_id,
        token={"type": "string", "minLength": 1},
        expires_at={"type": "integer", "description": "Unix time."},
    )
    token["properties"]["topics"] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "The topics the token grants (when `?topics=` asked for some).",
    }
    notice["properties"]["scheduled_id"] = {
        "type": "string",
        "description": "For a notice that was scheduled or held: the `scheduled_id` its publish answered.",
    }
    notice["description"] = (
        "A stored notice: the `data` of a `notice` event, and (with `status`) of a publish's answer. "
        "Its delivery options, when it was published with some, sit beside `data`."
    )
    event: dict[str, Schema] = {
        "data": {"type": "string", "description": "One line of JSON."},
        "id": {
            "type": "string",
            "description": (
                "Where to resume from (`Last-Event-ID`): a notice id, or on Redis Cluster a position per "
                "audience (`1052.1040`: the user's, the broadcasts', then each topic's). Send it back as is."
            ),
        },
        "retry": {"type": "integer", "minimum": 0, "description": "Reconnection time, in ms."},
    }

    def sse(name: str, description: str, data: Schema) -> Schema:
        return {
            "type": "object",
            "description": description,
            "properties": {
                **event,
                "event": {"const": name},
                "data": {**event["data"], "contentMediaType": JSON, "contentSchema": data},
            },
            "required": ["event", "data"],
        }

    inbox_notice = {
        **notice,
        "properties": {
            **notice["properties"],
            "read": {"type": "boolean"},
            "archived": {"type": "boolean"},
        },
        "required": [*notice["required"], "read", "archived"],
        "description": "A notice in a user's inbox, with its read and archived state.",
    }
    unread = {
        "type": "integer",
        "minimum": 0,
        "description": "Unread notices not archived, in the whole inbox.",
    }
    ids = {"type": "array", "items": {"type": "integer", "minimum": 1}}
    return {
        "UserId": user_id,
        "Topic": topic,
        "Followers": _obj(topic=topic, followers={"type": "array", "items": user_id}),
        "Following": _obj(topic=topic, user_id=user_id, following={"const": True}),
        "Notice": notice,
        "InboxNotice": inbox_notice,
        "InboxPage": _obj(
            notices={"type": "array", "items": _schema("InboxNotice")},
            unread=unread,
            next={
                "type": ["integer", "null"],
                "description": "Pass as `before` for the next page; `null` on the last one.",
            },
        ),
        "Marked": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "read": {"type": "boolean"},
                "archived": {"type": "boolean"},
                "unread": unread,
            },
            "required": ["id", "unread"],
            "additionalProperties": False,
            "description": "The mark that was set (`read` or `archived`) and the new unread count.",
        },
        "AllRead": _obj(
            read={"const": True},
            through={"type": "integer", "minimum": 0, "description": "Everything up to here is read."},
            unread=unread,
        ),
        "NoticeData": {
            "type": "object",
            "description": "Any JSON object, at most `SSE_NOTIFY_MAX_BODY` bytes.",
        },
        "BatchItem": {
            "type": "object",
            "properties": {
                "user_id": _schema("UserId"),
                "data": _schema("NoticeData"),
                **{name: {**schema, "description": text} for name, (schema, text) in _OPTIONS.items()},
            },
            "required": ["user_id", "data"],
            "additionalProperties": False,
        },
        "Receipt": {
            "description": "What a publish did for one recipient: `status` says.",
            "oneOf": [
                {
                    **notice,
                    "properties": {**notice["properties"], "status": {"const": "delivered"}},
                    "required": [*notice["required"], "status"],
                    "description": "Stored, and sent to every open stream of the user (or everyone's).",
                },
                {
                    "type": "object",
                    "properties": {
                        "status": {"enum": ["scheduled", "held"]},
                        "user_id": notice["properties"]["user_id"],
                        "topic": notice["properties"]["topic"],
                        "scheduled_id": {
                            "type": "string",
                            "description": "Cancel it with `DELETE /users/{user_id}/notices/{scheduled_id}`.",
                        },
                        "due_at": {"type": "string", "format": "date-time", "description": "When it is due."},
                        "reason": {"const": "quiet_hours", "description": "Held: the user's quiet hours."},
                        "data": {"type": "object"},
                        **_delivery_fields(),
                    },
                    "required": ["status", "user_id", "scheduled_id", "due_at", "data"],
                    "additionalProperties": False,
                    "description": "Kept until `due_at` (`send_at`/`delay`, or the end of quiet hours), "
                    "then delivered.",
                },
                {
                    "type": "object",
                    "properties": {
                        "status": {"const": "suppressed"},
                        "user_id": notice["properties"]["user_id"],
                        "reason": {"const": "category_muted"},
                        "data": {"type": "object"},
                        **_delivery_fields(),
                    },
                    "required": ["status", "user_id", "reason", "data"],
                    "additionalProperties": False,
                    "description": "Not stored: the user muted its category.",
                },
            ],
        },
        "Preferences": _preferences(),
        "Snoozed": _obj(
            id={"type": "integer", "minimum": 1},
            snoozed_until={"type": "string", "format": "date-time"},
            unread=unread,
        ),
        "Removed": {
            "oneOf": [
                _obj(id={"type": "integer", "minimum": 1}, removed={"const": True}, unread=unread),
                _obj(id={"type": "string"}, cancelled={"const": True}),
            ],
            "description": "A notice taken out of the inbox (`removed`), or cancelled before it was due.",
        },
        "Token": token,
        "Kicked": _obj(user_id=_schema("UserId"), kicked={"const": True}),
        "Contacts": {
            "type": "object",
            "properties": {
                "email": {
                    "type": ["string", "null"],
                    "pattern": f"^{EMAIL_ADDRESS.pattern}$",
                    "description": "Where fallback emails go (`null` or left out: none).",
                },
            },
            "additionalProperties": False,
            "description": "Where a user's notices go when they stay unread in the app.",
        },
        "PushSubscription": {
            "type": "object",
            "properties": {
                "endpoint": {"type": "string", "format": "uri", "maxLength": 1024},
                "expirationTime": {"type": ["number", "null"]},
                "keys": {
                    "type": "object",
                    "properties": {"p256dh": {"type": "string"}, "auth": {"type": "string"}},
                    "required": ["p256dh", "auth"],
                },
            },
            "required": ["endpoint", "keys"],
            "description": "`PushSubscription.toJSON()` as the browser gives it (`https://` in production).",
        },
        "PushEndpoint": _obj(endpoint={"type": "string", "description": "The push subscription's endpoint."}),
        "PushKey": _obj(
            public_key={
                "type": "string",
                "description": "The VAPID public key, URL-safe base64 (`applicationServerKey`).",
            }
        ),
        "TestEmail": _obj(sent={"const": True}, to={"type": "string", "description": "Where it went."}),
        "Presence": _obj(
            user_id=_schema("UserId"),
            online={"type": "boolean", "description": "Whether the user has a stream open anywhere."},
            streams={
                "type": "integer",
                "minimum": 0,
                "description": "Open streams over every worker and host (another worker's within "
                "`SSE_NOTIFY_PRESENCE_INTERVAL`).",
            },
        ),
        "Health": _obj(
            status={"const": "ok"},
            store={"const": "up"},
            streams={"type": "integer", "minimum": 0, "description": "Open streams of this worker."},
            users={"type": "integer", "minimum": 0, "description": "Users with an open stream here."},
            evicted={"type": "integer", "minimum": 0},
            refused={"type": "integer", "minimum": 0},
        ),
        "Unhealthy": _obj(
            status={"const": "unavailable"}, store={"const": "down"}, detail={"type": "string"}
        ),
        "Error": _obj(
            error={"type": "string", "description": "Machine-readable, e.g. `invalid_notice`."},
            detail={"type": "string", "description": "What is wrong, for a human."},
        ),
        "StreamEvent": {
            "description": (
                "One event of the stream (the per-event schema of `text/event-stream`, as OpenAPI 3.1 "
                "tools read it). Comments (`: connected`, heartbeats) and `id`/`retry`-only blocks "
                "are not events."
            ),
            "oneOf": [
                sse("notice", "A notice of this user, or a broadcast.", _schema("Notice")),
                sse(
                    "reset",
                    "`Last-Event-ID` was older than retention, or unknown: reload, then read on.",
                    _obj(
                        reason={"enum": ["expired", "unknown"]},
                        last_event_id={"type": "string"},
                        id={"type": "integer", "minimum": 0},
                    ),
                ),
                sse(
                    "close",
                    "The server ends the stream for a reason the page should act on.",
                    _obj(reason={"enum": ["token_expired", "replaced", "kicked"]}),
                ),
                sse(
                    "snapshot",
                    "The first event of every stream (`SSE_NOTIFY_SNAPSHOT`): the unread count and the "
                    "newest `SSE_NOTIFY_SNAPSHOT_SIZE` notices not archived. It has no `id`.",
                    _obj(
                        unread=unread,
                        cursor={
                            "type": "integer",
                            "minimum": 0,
                            "description": "The newest id in the inbox when taken: a replayed notice "
                            "at or below it is already counted.",
                        },
                        notices={"type": "array", "items": _schema("InboxNotice")},
                        preferences=_schema("Preferences"),
                    ),
                ),
                sse(
                    "preferences",
                    "The user's preferences changed (in any tab, or by a backend); no `id`.",
                    _schema("Preferences"),
                ),
                sse(
                    "remove",
                    "Notices were removed from the inbox; no `id`.",
                    _obj(ids=ids, removed={"const": True}, unread=unread),
                ),
                sse(
                    "snooze",
                    "A notice was snoozed: hidden, and not counted, until `until`; no `id`.",
                    _obj(
                        ids=ids,
                        snoozed={"const": True},
                        until={"type": "string", "format": "date-time"},
                        unread=unread,
                    ),
                ),
                sse(
                    "notice",
                    "A snoozed notice is back, unread (`returned`); no `id`: it is no new notice.",
                    {
                        **inbox_notice,
                        "properties": {
                            **inbox_notice["properties"],
                            "returned": {"const": "snooze"},
                            "unread": unread,
                        },
                        "required": [*inbox_notice["required"], "returned", "unread"],
                    },
                ),
                sse(
                    "read",
                    "Notices were marked read or unread (in any tab or by a backend); no `id`. After "
                    "read-all: `all: true` and `through`.",
                    {
                        "type": "object",
                        "properties": {
                            "ids": ids,
                            "read": {"type": "boolean"},
                            "all": {"const": True},
                            "through": {"type": "integer", "minimum": 0},
                            "unread": unread,
                        },
                        "required": ["ids", "read", "unread"],
                        "additionalProperties": False,
                    },
                ),
                sse(
                    "archive",
                    "Notices were archived or unarchived; no `id`.",
                    _obj(ids=ids, archived={"type": "boolean"}, unread=unread),
                ),
            ],
        },
    }


def _shared_responses(settings: Settings) -> dict[str, Schema]:
    www = {"WWW-Authenticate": _header('Always `Bearer realm="sse_notify"`.', {"type": "string"})}
    retry = {"Retry-After": _header("Seconds until the window resets.", {"type": "integer", "minimum": 1})}
    return {
        "400": _error(
            "Bad request: a user id that breaks the rule (`invalid_user_id`, on every route), a body "
            "that is not valid JSON, data that is not a JSON object, a malformed batch (the detail "
            "names the item)",
            ["bad_request", "invalid_notice", "invalid_user_id", "invalid_option", "invalid_field"],
        ),
        "401": _error(
            "No credentials, or bad ones", ["unauthorized", "invalid_token", "token_expired"], headers=www
        ),
        "403": _error(
            "Credentials that do not allow this: a token of another user, an unknown key", ["forbidden"]
        ),
        "404": _error(
            "No such route (a user id with `/` in it, for one), or a notice not in the user's inbox",
            ["not_found"],
        ),
        "409": _error(
            "The notice is a broadcast: it cannot be removed from one user's inbox (archive it); or the "
            "user has no email address for a test email",
            ["conflict"],
        ),
        "413": _error(
            f"The body, or a notice's data, is over `SSE_NOTIFY_MAX_BODY` ({settings.max_body} bytes here; "
            f"a batch's body: `SSE_NOTIFY_MAX_BATCH_BODY`, {settings.max_batch_body} bytes)",
            ["payload_too_large"],
        ),
        "415": _error("The body is not sent as `application/json`", ["unsupported_media_type"]),
        "422": _error(
            "The `Idempotency-Key` was used for a different request within `SSE_NOTIFY_IDEMPOTENCY_TTL`; "
            "nothing was stored",
            ["idempotency_key_reused"],
        ),
        "429": _error(
            "The publish key is over `SSE_NOTIFY_RATE_LIMIT` (or a second test email within a minute)",
            ["rate_limited"],
            headers=retry,
        ),
        "500": _error("The store failed", ["store_error", "internal_server_error"]),
        "502": _error(
            "The provider (the SMTP server) did not take the message; the detail says why", ["channel_failed"]
        ),
        "503": _error("The store cannot be reached; nothing was stored", ["store_unavailable"]),
    }


def _security_schemes(settings: Settings) -> dict[str, Schema]:
    token = "A connection token (`POST /users/{user_id}/tokens`, `sse_notify.issue_token`)"
    return {
        "publishKey": {
            "type": "http",
            "scheme": "bearer",
            "description": "A key of `SSE_NOTIFY_PUBLISH_KEYS`: `Authorization: Bearer <key>`.",
        },
        "connectionToken": {
            "type": "apiKey",
            "in": "query",
            "name": "token",
            "description": f"{token} in `?token=` (EventSource cannot send headers).",
        },
        "connectionTokenBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": f"{token} in `Authorization: Bearer <token>`; it wins over the other two.",
        },
        "connectionTokenCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": settings.token_cookie,
            "description": f"{token} in the cookie `sse_notify.set_token_cookie` sets.",
        },
    }


def _paths(settings: Settings) -> dict[str, Schema]:
    topic_parameter = {
        "name": "topic",
        "in": "path",
        "required": True,
        "description": "The topic; one that breaks the rule is answered 400.",
        "schema": _schema("Topic"),
    }
    user = {
        "name": "user_id",
        "in": "path",
        "required": True,
        "description": "The user; one that breaks the rule is answered 400.",
        "schema": _schema("UserId"),
    }
    publisher: list[dict[str, list[str]]] = [{"publishKey": []}]
    reader: list[dict[str, list[str]]] = [
        {"connectionTokenBearer": []},
        {"connectionToken": []},
        {"publishKey": []},
    ]
    notice_id = {
        "name": "notice_id",
        "in": "path",
        "required": True,
        "description": "The notice's id.",
        "schema": {"type": "integer", "minimum": 0},
    }

    def flag(name: str, description: str) -> Schema:
        return {
            "name": name,
            "in": "query",
            "description": f"{description} `true` or `false` (default).",
            "schema": {"enum": ["true", "false", "1", "0"]},
        }

    auth_errors = ("401", "403", "429")
    health = {
        "200": _json("Up, with this worker's stream counts.", _schema("Health")),
        "503": _json("The store cannot be reached.", _schema("Unhealthy")),
    }

    def on_user(
        names: tuple[str, str],
        answer: tuple[str, str, str],
        errors: t.Sequence[str],
        *,
        security: list[dict[str, list[str]]],
        tag: str = "stream",
        description: str = "",
    ) -> Schema:
        """An operation on one user: ``(operationId, summary)``, ``(status, description, schema)``."""
        status, said, schema = answer
        responses = {status: _json(said, _schema(schema)), **_responses(*errors)}
        return _operation(
            *names, responses, description=description, security=security, parameters=[user], tag=tag
        )

    notice_body = _json("The notice's data.", _schema("NoticeData"), required=True)
    idempotency_key = {
        "name": "Idempotency-Key",
        "in": "header",
        "description": (
            "Store this publish once: sent again with the same request within "
            "`SSE_NOTIFY_IDEMPOTENCY_TTL` (a day), nothing new is stored and the answer is the first "
            "one's notices, with `Idempotent-Replayed: true`. Reused for another request: 422. "
            "Retry a publish whose answer was lost with the same key."
        ),
        "schema": {"type": "string", "pattern": _anchored(IDEMPOTENCY_KEY.pattern)},
    }
    replayed = {
        "Idempotent-Replayed": {
            "description": "`true`: an `Idempotency-Key` matched an earlier publish (nothing new stored).",
            "schema": {"const": "true"},
        }
    }
    created_or_replayed = _json(
        "Stored and delivered, or kept until due (`status`); with `Idempotent-Replayed`, stored earlier.",
        _schema("Receipt"),
        headers=replayed,
    )
    suppressed = _json("Nothing stored: the user muted the notice's category (`status`).", _schema("Receipt"))
    options = [
        {
            "name": name,
            "in": "query",
            "description": f"{text} A bad value is a 400 (`invalid_option`) that names it.",
            "schema": schema if name not in {"delay", "critical"} else {"type": "string"},
        }
        for name, (schema, text) in _OPTIONS.items()
    ]
    stream_headers = {
        "Cache-Control": _header("`no-cache`.", {"const": "no-cache"}),
        "X-Accel-Buffering": _header("`no`: tells nginx not to buffer.", {"const": "no"}),
    }
    return {
        "/": {
            "get": _operation(
                "index",
                "The demo page",
                {"200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
                tag="meta",
            )
        },
        "/sse-notify.js": {
            "get": _operation(
                "clientScript",
                "The browser client (one connection per user across tabs; see docs/CLIENT.md)",
                {
                    "200": {
                        "description": "JavaScript.",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/sse-notify.mjs": {
            "get": _operation(
                "clientModule",
                "The browser client as an ES module (`import SSENotify, { connect } from ...`)",
                {
                    "200": {
                        "description": "JavaScript: the same code as `/sse-notify.js`, exported.",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/sse-notify.d.ts": {
            "get": _operation(
                "clientTypes",
                "The TypeScript declarations of the browser client",
                {
                    "200": {
                        "description": "TypeScript declarations, for the ES module and the script tag.",
                        "content": {"application/typescript": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/sse-notify-sw.js": {
            "get": _operation(
                "serviceWorker",
                "The service worker that shows Web Push messages (see docs/CLIENT.md)",
                {
                    "200": {
                        "description": "JavaScript.",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    }
                },
                tag="meta",
            )
        },
        "/push/public-key": {
            "get": _operation(
                "pushPublicKey",
                "The key pages subscribe to Web Push with",
                {"200": _json("The key.", _schema("PushKey")), **_responses("404")},
                description="404 when `SSE_NOTIFY_PUSH` is off.",
                tag="channels",
            )
        },
        "/users/{user_id}/push-subscriptions": {
            "post": _operation(
                "addPushSubscription",
                "Keep a browser's push subscription of the user",
                {
                    "201": _json("Kept.", _schema("PushEndpoint")),
                    "200": _json("It was kept already.", _schema("PushEndpoint")),
                    **_responses("400", "401", "403", "404", "413", "415", "500", "503"),
                },
                description="At most 10 per user (a new one replaces the oldest). 404 when push is off; a "
                "body that is not a subscription is a 400 `invalid_field`.",
                security=reader,
                parameters=[user],
                body=_json("The subscription.", _schema("PushSubscription"), required=True),
                tag="channels",
            ),
            "delete": _operation(
                "removePushSubscription",
                "Forget a push subscription of the user",
                {
                    "204": {"description": "Forgotten."},
                    **_responses("400", "401", "403", "404", "413", "415", "500", "503"),
                },
                security=reader,
                parameters=[user],
                body=_json("Which one.", _obj(endpoint={"type": "string"}), required=True),
                tag="channels",
            ),
        },
        "/users/{user_id}/channels/email/test": {
            "post": on_user(
                ("testEmail", "Send the user a test email now"),
                ("200", "Sent.", "TestEmail"),
                ("400", "401", "403", "404", "409", "429", "500", "502", "503"),
                security=reader,
                tag="channels",
                description="404 when email is off, 409 when the user has no address, 502 when the SMTP "
                "server refuses; once a minute per user.",
            )
        },
        "/connection/{user_id}": {
            "get": _operation(
                "connection",
                "The user's event stream",
                {
                    "200": {
                        "description": (
                            "The stream, until the client leaves, the token expires (`close` event), or the "
                            "server ends it. A server that is stopping or full also answers 200, with a "
                            "comment and a `retry:` only: any other status makes EventSource give up."
                        ),
                        "headers": stream_headers,
                        "content": {"text/event-stream": {"schema": _schema("StreamEvent")}},
                    },
                    **_responses("400", "401", "403", "404"),
                },
                description=(
                    "Replays every notice after `Last-Event-ID` (or `?last_event_id=`), then goes live. "
                    "Needs a connection token of this user (or the host app's `authorize` hook)."
                ),
                security=[
                    {"connectionToken": []},
                    {"connectionTokenBearer": []},
                    {"connectionTokenCookie": []},
                ],
                parameters=[
                    user,
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "description": "Resume after this cursor (for clients that cannot send the header).",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "description": "Resume after this cursor; wins over `?last_event_id=`.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "topics",
                        "in": "query",
                        "description": (
                            "Also get these topics' notices (comma-separated, at most 32), live and in "
                            "replay. Each must be granted by the token, or allowed by the host app's "
                            "`authorize_topic` hook: else 403."
                        ),
                        "schema": {"type": "string"},
                    },
                ],
                tag="stream",
            )
        },
        "/users/{user_id}/notices": {
            "get": _operation(
                "inbox",
                "A page of the user's inbox, newest first, with the unread count",
                {
                    "200": _json("The page.", _schema("InboxPage")),
                    **_responses("400", "401", "403", "500", "503"),
                },
                description=(
                    "The user's notices and the broadcasts the store still holds. Without filters: "
                    "those not archived. Needs the user's connection token or a publish key."
                ),
                security=reader,
                parameters=[
                    user,
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "Notices per page (default 20, at most `SSE_NOTIFY_INBOX_PAGE_MAX`).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": settings.inbox_page_max},
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "description": "Only notices older than this id (the previous page's `next`).",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                    },
                    flag("unread", "Only unread notices."),
                    flag("archived", "Only archived notices (instead of only those not archived)."),
                    flag("snoozed", "Only snoozed notices (instead of only those not snoozed)."),
                ],
                tag="inbox",
            ),
            "post": _operation(
                "publish",
                "Send a notice to one user",
                {
                    "200": suppressed,
                    "201": created_or_replayed,
                    **_responses("400", *auth_errors, "404", "413", "415", "422", "500", "503"),
                },
                description=(
                    "The user's preferences apply: a notice in a category they muted is not stored (200), "
                    "one sent in their quiet hours is held until the hours end; `critical=true` ignores "
                    "both. With `send_at` or `delay` it is kept until then."
                ),
                security=publisher,
                parameters=[user, idempotency_key, *options],
                body=notice_body,
            ),
        },
        "/broadcast": {
            "post": _operation(
                "broadcast",
                "Send a notice to every user",
                {
                    "201": created_or_replayed,
                    **_responses("400", *auth_errors, "413", "415", "422", "500", "503"),
                },
                description=(
                    "Each user's mutes apply to it on their streams, in replay and in their inbox; quiet "
                    "hours do not hold broadcasts. `group` is refused (400)."
                ),
                security=publisher,
                parameters=[idempotency_key, *[p for p in options if p["name"] != "group"]],
                body=notice_body,
            )
        },
        "/topics/{topic}/notices": {
            "post": _operation(
                "publishTopic",
                "Send a notice to every stream that follows a topic",
                {
                    "200": _json(
                        "`inbox=true`, and nothing stored: no followers, or each muted the category.",
                        {"type": "array", "items": _schema("Receipt")},
                    ),
                    "201": _json(
                        "Stored and delivered, or kept until due (`status`); with `inbox=true`, a receipt "
                        "per follower. With `Idempotent-Replayed`, stored earlier.",
                        {"oneOf": [_schema("Receipt"), {"type": "array", "items": _schema("Receipt")}]},
                        headers=replayed,
                    ),
                    **_responses("400", *auth_errors, "413", "415", "422", "500", "503"),
                },
                description=(
                    "Stored with history: a stream that follows the topic (`?topics=`) gets it live, or in "
                    "its replay when it resumes. It is in no inbox. Each viewer's mutes apply on their "
                    "stream; `group` is refused (400). With `inbox=true` it goes instead to each of the "
                    "topic's followers (`PUT /topics/{topic}/followers/{user_id}`) as their own notice, "
                    "and the answer is a list of receipts, one per follower (200 with `[]` for none)."
                ),
                security=publisher,
                parameters=[
                    topic_parameter,
                    idempotency_key,
                    flag("inbox", "Deliver it to each follower of the topic as their own notice."),
                    *[p for p in options if p["name"] != "group"],
                ],
                body=notice_body,
            )
        },
        "/topics/{topic}/followers": {
            "get": _operation(
                "topicFollowers",
                "The users who follow a topic",
                {
                    "200": _json("The followers.", _schema("Followers")),
                    **_responses("400", *auth_errors, "500", "503"),
                },
                security=publisher,
                parameters=[topic_parameter],
                tag="topics",
            )
        },
        "/topics/{topic}/followers/{user_id}": {
            "put": _operation(
                "followTopic",
                "Make a user follow a topic (its `inbox=true` notices reach their inbox)",
                {
                    "200": _json("They already did.", _schema("Following")),
                    "201": _json("They do now.", _schema("Following")),
                    **_responses("400", *auth_errors, "500", "503"),
                },
                security=publisher,
                parameters=[topic_parameter, user],
                tag="topics",
            ),
            "delete": _operation(
                "unfollowTopic",
                "Make a user no longer follow a topic",
                {
                    "204": {"description": "They no longer do."},
                    **_responses("400", *auth_errors, "404", "500", "503"),
                },
                security=publisher,
                parameters=[topic_parameter, user],
                tag="topics",
            ),
        },
        "/notices": {
            "post": _operation(
                "publishBatch",
                "Send several notices; those delivered now in one transaction (all or none)",
                {
                    "200": _json(
                        "Nothing stored: every notice suppressed.",
                        {"type": "array", "items": _schema("Receipt")},
                    ),
                    "201": _json(
                        "What happened to each notice (`status`), in order.",
                        {"type": "array", "items": _schema("Receipt")},
                        headers=replayed,
                    ),
                    **_responses("400", *auth_errors, "413", "415", "422", "500", "503"),
                },
                description=f"At most `SSE_NOTIFY_MAX_BATCH` ({settings.max_batch}) notices; more is a 400.",
                security=publisher,
                parameters=[idempotency_key],
                body=_json(
                    "The notices.",
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": settings.max_batch,
                        "items": _schema("BatchItem"),
                    },
                    required=True,
                ),
            )
        },
        **{
            f"/users/{{user_id}}/notices/{{notice_id}}/{action}": {
                "post": _operation(
                    f"mark{action.capitalize()}",
                    summary,
                    {
                        "200": _json("Marked.", _schema("Marked")),
                        **_responses("400", "401", "403", "404", "500", "503"),
                    },
                    description=(
                        "Every open stream of the user, on every worker, gets the change as a "
                        f"`{'read' if 'read' in action else 'archive'}` event. Marking again is harmless."
                    ),
                    security=reader,
                    parameters=[user, notice_id],
                    tag="inbox",
                )
            }
            for action, summary in (
                ("read", "Mark a notice read"),
                ("unread", "Mark a notice unread"),
                ("archive", "Archive a notice"),
                ("unarchive", "Take a notice out of the archive"),
            )
        },
        "/users/{user_id}/notices/{notice_id}": {
            "delete": _operation(
                "removeNotice",
                "Cancel a notice that is not yet due, or remove one from the inbox",
                {
                    "200": _json("Cancelled, or removed.", _schema("Removed")),
                    **_responses("400", "401", "403", "404", "409", "500", "503"),
                },
                description=(
                    "By the `scheduled_id` a scheduled or held notice was given: cancelled while it waits, "
                    "removed from the inbox once delivered. By a notice's id: removed from the inbox (and "
                    "from replay); open streams get a `remove` event. A broadcast cannot be removed from "
                    "one inbox (409): archive it."
                ),
                security=reader,
                parameters=[
                    user,
                    {
                        "name": "notice_id",
                        "in": "path",
                        "required": True,
                        "description": "A notice's id, or a `scheduled_id`.",
                        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                    },
                ],
                tag="inbox",
            )
        },
        "/users/{user_id}/notices/{notice_id}/snooze": {
            "post": _operation(
                "snoozeNotice",
                "Hide a notice for a while; it comes back unread",
                {
                    "200": _json("Snoozed.", _schema("Snoozed")),
                    **_responses("400", "401", "403", "404", "500", "503"),
                },
                description=(
                    "Hidden from the inbox and the unread count in every tab at once (a `snooze` event); "
                    "at the time, unread again and sent to every open stream (a `notice` event with "
                    "`returned`, no `id`), once, by whichever worker claims it. Snoozing again moves "
                    "the time."
                ),
                security=reader,
                parameters=[
                    user,
                    notice_id,
                    {
                        "name": "seconds",
                        "in": "query",
                        "description": f"For this long (up to {MAX_DELAY}); or `until`.",
                        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DELAY},
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "Until this RFC 3339 time (with its offset); or `seconds`.",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                ],
                tag="inbox",
            )
        },
        "/users/{user_id}/preferences": {
            "get": on_user(
                ("getPreferences", "The user's preferences"),
                ("200", "The preferences (the defaults if none were set).", "Preferences"),
                ("400", "401", "403", "500", "503"),
                security=reader,
                tag="preferences",
            ),
            "put": _operation(
                "setPreferences",
                "Replace the user's preferences",
                {
                    "200": _json("The preferences now.", _schema("Preferences")),
                    **_responses("400", "401", "403", "413", "415", "500", "503"),
                },
                description="Every open stream of the user gets a `preferences` event at once.",
                security=reader,
                parameters=[user],
                body=_json("The preferences.", _schema("Preferences"), required=True),
                tag="preferences",
            ),
        },
        "/users/{user_id}/contacts": {
            "get": on_user(
                ("getContacts", "Where a user's fallbacks go"),
                ("200", "The contacts (`{}` if none were set).", "Contacts"),
                ("400", *auth_errors, "404", "500", "503"),
                security=publisher,
                tag="channels",
            ),
            "put": _operation(
                "setContacts",
                "Replace a user's contacts",
                {
                    "200": _json("The contacts now.", _schema("Contacts")),
                    **_responses("400", *auth_errors, "404", "413", "415", "500", "503"),
                },
                description="Personal data: a publish key only, never the user's token. A bad address "
                "is a 400 `invalid_field`.",
                security=publisher,
                parameters=[user],
                body=_json("The contacts.", _schema("Contacts"), required=True),
                tag="channels",
            ),
            "delete": _operation(
                "deleteContacts",
                "Forget a user's contacts",
                {
                    "204": {"description": "Forgotten."},
                    **_responses("400", *auth_errors, "404", "500", "503"),
                },
                security=publisher,
                parameters=[user],
                tag="channels",
            ),
        },
        "/users/{user_id}/notices/read-all": {
            "post": on_user(
                ("markAllRead", "Mark everything in the user's inbox read"),
                ("200", "Marked.", "AllRead"),
                ("400", "401", "403", "500", "503"),
                security=reader,
                tag="inbox",
                description="Open streams get a `read` event with `all: true`.",
            )
        },
        "/users/{user_id}/tokens": {
            "post": _operation(
                "issueToken",
                "Issue a connection token for a user",
                {"201": _json("The token.", _schema("Token")), **_responses("400", *auth_errors, "404")},
                security=publisher,
                parameters=[
                    user,
                    {
                        "name": "ttl",
                        "in": "query",
                        "description": "Seconds (default `SSE_NOTIFY_TOKEN_TTL`); out of range: 400.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_TTL},
                    },
                    {
                        "name": "topics",
                        "in": "query",
                        "description": (
                            "Topics the token lets a stream follow (comma-separated): names, or prefixes "
                            "ending in `*` (`match-*`; `*` alone: any)."
                        ),
                        "schema": {"type": "string"},
                    },
                ],
                tag="stream",
            )
        },
        "/users/{user_id}/kick": {
            "post": on_user(
                ("kick", "Close every open stream of a user, on every worker"),
                ("202", "Announced to every worker.", "Kicked"),
                ("400", *auth_errors, "404", "500", "503"),
                security=publisher,
            )
        },
        "/users/{user_id}/presence": {
            "get": on_user(
                ("presence", "Whether a user is online, and with how many streams"),
                ("200", "The user's presence.", "Presence"),
                ("400", "401", "403", "404", "500", "503"),
                security=reader,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus metrics of every worker",
                {
                    "200": {
                        "description": "The Prometheus text format (docs/PRODUCTION.md lists the metrics).",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _ref("responses", "404"),
                },
                description="Turned off (404) by `SSE_NOTIFY_METRICS=false`.",
                tag="meta",
            )
        },
        "/healthz": {"get": _operation("healthz", "Whether the store answers", health, tag="meta")},
        "/openapi.json": {
            "get": _operation(
                "openapi",
                "This document",
                {
                    "200": _json(
                        "The OpenAPI document.",
                        {"type": "object", "required": ["openapi", "info", "paths"]},
                    )
                },
                tag="meta",
            )
        },
    }


def document(settings: Settings, prefix: str = "") -> dict[str, t.Any]:
    """The OpenAPI document of an app with ``settings``, with every path under ``prefix``."""
    prefix = prefix.rstrip("/")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sse_notify",
            "version": "1",
            "summary": "Per-user notifications over Server-Sent Events.",
            "description": (
                'Every error is JSON, `{"error": ..., "detail": ...}`, 404 and 405 included. Write '
                "endpoints need a publish key; a stream needs a connection token of its user."
            ),
        },
        "tags": [
            {"name": "notices", "description": "Publish (publish key)."},
            {"name": "stream", "description": "Streams, their tokens, and kicking them."},
            {
                "name": "inbox",
                "description": "A user's notices with read state (their token or a publish key).",
            },
            {
                "name": "preferences",
                "description": "What a user gets, and when (their token or a publish key).",
            },
            {
                "name": "channels",
                "description": "Email, Web Push and webhooks for notices left unread (README: Where else).",
            },
            {
                "name": "topics",
                "description": "Who follows a topic (publish key); publishing to one is under notices.",
            },
            {"name": "meta", "description": "Health, this document, the demo page."},
        ],
        "paths": {prefix + path: item for path, item in _paths(settings).items()},
        "components": {
            "schemas": _schemas(),
            "responses": _shared_responses(settings),
            "securitySchemes": _security_schemes(settings),
        },
    }
