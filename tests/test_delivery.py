"""What, when and how often: delivery options, preferences, quiet hours, scheduling over HTTP, removal."""

from __future__ import annotations

import os
import signal
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient

from sse_notify.delivery import (
    DEFAULT_PREFERENCES,
    MAX_DELAY,
    Options,
    Preferences,
    QuietHours,
    checked_options,
    parse_time,
)
from sse_notify.errors import InvalidOption
from sse_notify.service import DUE_NOTICE, get_state

from .sse_client import subscribe
from .support import AUTH, RedisServer, Server, assert_json_error, delivered, token_for, wait_for

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def utc(text: str) -> float:
    """Unix time of an ISO time."""
    return datetime.fromisoformat(text).timestamp()


# -- options -------------------------------------------------------------------


def test_options_read_the_same_from_a_query_json_and_python() -> None:
    """Strings (a query), JSON values and Python values give the same options."""
    query = {"category": "promo", "critical": "true", "delay": "90", "group": "likes:42"}
    body = {"category": "promo", "critical": True, "delay": 90, "group": "likes:42"}
    expected = Options("promo", True, NOW + 90, "likes:42")
    assert checked_options(query, now=NOW) == checked_options(body, now=NOW) == expected
    at = datetime.fromtimestamp(NOW + 60, timezone.utc)
    for send_at in (at, at.isoformat(), "2027-01-15T09:01:00+01:00", "2027-01-15t08:01:00.000z"):
        assert checked_options({"send_at": send_at}, now=NOW).due == NOW + 60
    assert checked_options({"send_at": "2027-01-15T07:00:00Z"}, now=NOW).due is None  # past: now
    assert checked_options({"delay": 0}, now=NOW) == Options()


@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"category": "has space"}, "category"),
        ({"category": ""}, "category"),
        ({"group": "x" * 129}, "group"),
        ({"critical": "yes"}, "critical"),
        ({"critical": 1}, "critical"),
        ({"delay": "-1"}, "delay"),
        ({"delay": "nan"}, "delay"),
        ({"delay": True}, "delay"),
        ({"delay": MAX_DELAY + 1}, "delay"),
        ({"send_at": "2027-01-15T09:00:00"}, "send_at"),  # no offset
        ({"send_at": "2027-02-30T09:00:00Z"}, "send_at"),
        ({"send_at": "tomorrow"}, "send_at"),
        ({"send_at": datetime(2027, 1, 16)}, "send_at"),  # naive
        ({"send_at": "2029-01-15T08:00:00Z"}, "send_at"),  # too far
        ({"send_at": "2027-01-16T08:00:00Z", "delay": 5}, "send_at"),
    ],
)
def test_a_bad_option_is_refused_by_name(values: dict[str, t.Any], option: str) -> None:
    """Each bad value is an InvalidOption (400) whose message and attribute name the option."""
    with pytest.raises(InvalidOption, match=option) as caught:
        checked_options(values, now=NOW)
    assert caught.value.option == option


def test_rfc3339_times_keep_their_fraction_and_offset() -> None:
    """parse_time reads fractions and offsets exactly."""
    assert parse_time("2027-01-15T08:00:00.25Z") == NOW + 0.25
    assert parse_time("2027-01-15T03:30:00-04:30") == NOW


# -- quiet hours ---------------------------------------------------------------


def quiet(start: str, end: str, zone: str) -> QuietHours:
    """Quiet hours, checked as a PUT checks them."""
    hours = Preferences.checked({"quiet_hours": {"start": start, "end": end, "timezone": zone}}).quiet_hours
    assert hours is not None
    return hours


@pytest.mark.parametrize(
    ("now", "until"),
    [
        # Berlin, 22:00-07:00: inside before and after midnight, outside in the day.
        ("2027-01-15T21:30:00+00:00", "2027-01-16T06:00:00+00:00"),  # 22:30 CET
        ("2027-01-16T05:59:00+00:00", "2027-01-16T06:00:00+00:00"),  # 06:59 CET
        ("2027-01-16T06:00:00+00:00", None),  # 07:00 CET: over
        ("2027-01-15T12:00:00+00:00", None),
        # The night the clocks go forward (2027-03-28, 02:00 CET -> 03:00 CEST): ends 07:00 CEST.
        ("2027-03-27T22:00:00+00:00", "2027-03-28T05:00:00+00:00"),
        # The night they go back (2027-10-31, 03:00 CEST -> 02:00 CET): ends 07:00 CET.
        ("2027-10-30T21:00:00+00:00", "2027-10-31T06:00:00+00:00"),
    ],
)
def test_quiet_hours_follow_the_users_clock(now: str, until: str | None) -> None:
    """The window is in the user's zone, crosses midnight, and follows daylight-saving changes."""
    hours = quiet("22:00", "07:00", "Europe/Berlin")
    assert hours.until(utc(now)) == (None if until is None else utc(until))


def test_quiet_hours_within_a_day_and_on_the_other_side_of_the_world() -> None:
    """A window that does not cross midnight, in a zone west of UTC."""
    hours = quiet("12:00", "13:30", "America/New_York")  # EST, UTC-5
    assert hours.until(utc("2027-01-15T17:15:00+00:00")) == utc("2027-01-15T18:30:00+00:00")
    assert hours.until(utc("2027-01-15T18:30:00+00:00")) is None
    assert hours.until(utc("2027-07-15T16:15:00+00:00")) == utc("2027-07-15T17:30:00+00:00")  # EDT


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"categories": {"promo": {"sms": False}}}, "categories.promo"),  # not a channel
        ({"categories": {"promo": {"in_app": "no"}}}, "categories.promo.in_app"),
        ({"categories": {"bad name": {"in_app": False}}}, "categories"),
        ({"categories": []}, "categories"),
        ({"default": {"in_app": 0}}, "default.in_app"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00"}}, "quiet_hours"),
        ({"quiet_hours": {"start": "24:00", "end": "07:00", "timezone": "UTC"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "7:00", "timezone": "UTC"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00", "timezone": "UTC"}}, "quiet_hours"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Base"}},
            "quiet_hours.timezone",
        ),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "../etc/passwd"}},
            "quiet_hours.timezone",
        ),
        ({"mute_all": True}, "mute_all"),
    ],
)
def test_bad_preferences_are_refused_by_field(body: dict[str, t.Any], field: str) -> None:
    """Every wrong field of a preferences body is named."""
    with pytest.raises(InvalidOption, match=field.replace(".", r"\.")) as caught:
        Preferences.checked(body)
    assert caught.value.option.startswith(field.split(".")[0])


def test_preferences_decide_per_category_with_a_default() -> None:
    """Listed categories win; others follow the default; no category and critical always go."""
    prefs = Preferences.checked({"categories": {"news": {"in_app": True}}, "default": {"in_app": False}})
    assert (prefs.wants("news"), prefs.wants("promo"), prefs.wants(None)) == (True, False, True)
    assert prefs.decide(Options(category="promo"), NOW) == ("suppressed", "category_muted", None)
    assert prefs.decide(Options(category="promo", critical=True), NOW) == ("delivered", None, None)
    assert DEFAULT_PREFERENCES.decide(Options(category="promo"), NOW) == ("delivered", None, None)
    assert Preferences.from_json(prefs.to_json()) == prefs


# -- in the app ----------------------------------------------------------------


def quiet_now() -> dict[str, str]:
    """Quiet hours in UTC from the hour before this one to the end of the next (at least an hour from now).

    (Until the next hour only, a test that steps a minute ahead at 11:59 left them.)
    """
    hour = datetime.now(timezone.utc).hour
    return {"start": f"{(hour - 1) % 24:02}:00", "end": f"{(hour + 2) % 24:02}:00", "timezone": "UTC"}


def test_a_batch_answers_what_happened_to_each_notice(client: FlaskClient, app: Flask) -> None:
    """Delivered, scheduled, held and suppressed, each with what a publisher needs, in order."""
    with app.app_context():
        get_state(app).set_preferences("dora", {"quiet_hours": quiet_now()})
        get_state(app).set_preferences("erin", {"categories": {"promo": {"in_app": False}}})
    body = [
        {"user_id": "carl", "data": {"n": 1}, "category": "promo"},
        {"user_id": "carl", "data": {"n": 2}, "delay": 600},
        {"user_id": "dora", "data": {"n": 3}},
        {"user_id": "erin", "data": {"n": 4}, "category": "promo"},
        {"user_id": "erin", "data": {"n": 5}, "category": "promo", "critical": True},
    ]
    response = client.post("/notices", json=body, headers=AUTH)
    assert response.status_code == 201
    answer = response.get_json()
    assert [r["status"] for r in answer] == ["delivered", "scheduled", "held", "suppressed", "delivered"]
    assert (answer[0]["category"], type(answer[0]["id"])) == ("promo", int)
    assert (answer[1]["scheduled_id"][0], "id" in answer[1]) == ("s", False)
    assert (
        abs(
            datetime.fromisoformat(answer[1]["due_at"].replace("Z", "+00:00")).timestamp() - time.time() - 600
        )
        < 5
    )
    assert (answer[2]["reason"], answer[2]["data"]) == ("quiet_hours", {"n": 3})
    assert (answer[3]["reason"], answer[3]["data"], answer[3]["category"]) == (
        "category_muted",
        {"n": 4},
        "promo",
    )
    assert answer[4]["critical"] is True
    with app.app_context():
        state = get_state(app)
        assert [item.notice.data for item in state.inbox("erin").items] == [{"n": 5}]
        assert [item.notice.data for item in state.inbox("dora").items] == []
        assert state.broker.scheduled(DUE_NOTICE) == 2


def test_a_suppressed_single_publish_is_200_and_stores_nothing(client: FlaskClient, app: Flask) -> None:
    """The one recipient muted the category: 200 (nothing created), and the inbox stays empty."""
    with app.app_context():
        get_state(app).set_preferences("alice", {"default": {"in_app": False}})
    response = client.post("/users/alice/notices?category=promo", json={"n": 1}, headers=AUTH)
    assert (response.status_code, response.get_json()["status"]) == (200, "suppressed")
    response = client.post("/users/alice/notices", json={"n": 2}, headers=AUTH)  # no category: delivered
    assert (response.status_code, response.get_json()["status"]) == (201, "delivered")
    with app.app_context():
        assert [item.notice.data for item in get_state(app).inbox("alice").items] == [{"n": 2}]


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("delay=soon", "delay"),
        ("send_at=2027-01-15", "send_at"),
        ("critical=maybe", "critical"),
        ("category=a%20b", "category"),
        ("sendat=1", "sendat"),
        ("delay=1&delay=2", "delay"),
        ("delay=1&send_at=2027-01-15T08:00:00Z", "send_at"),
    ],
)
def test_bad_query_options_are_400_naming_the_option(client: FlaskClient, query: str, option: str) -> None:
    """A single publish refuses a bad, unknown or repeated option, and stores nothing."""
    response = client.post(f"/users/alice/notices?{query}", json={"n": 1}, headers=AUTH)
    assert option in assert_json_error(response, 400, "invalid_option")["detail"]


def test_bad_batch_options_are_400_naming_item_and_option(client: FlaskClient) -> None:
    """In a batch, the item and the option are named; a group on a broadcast is refused too."""
    body = [{"user_id": "a", "data": {}}, {"user_id": "b", "data": {}, "delay": -5}]
    detail = assert_json_error(client.post("/notices", json=body, headers=AUTH), 400, "invalid_option")[
        "detail"
    ]
    assert detail.startswith("notice 1: delay")
    body = [{"user_id": "a", "data": {}, "colour": "red"}]
    assert (
        "colour"
        in assert_json_error(client.post("/notices", json=body, headers=AUTH), 400, "invalid_option")[
            "detail"
        ]
    )
    response = client.post("/broadcast?group=g", json={}, headers=AUTH)
    assert "group" in assert_json_error(response, 400, "invalid_option")["detail"]


def test_a_held_notice_is_delivered_when_quiet_hours_end(app: Flask) -> None:
    """Held until the end of the user's quiet hours: then stored, not before; a critical one at once."""
    with app.app_context():
        state = get_state(app)
        state.set_preferences("alice", {"quiet_hours": quiet_now()})
        held = state.notify("alice", {"n": 1})
        urgent = state.notify("alice", {"n": 2}, critical=True)
        assert (held.status, urgent.status) == ("held", "delivered")
        assert held.due is not None
        assert held.due > time.time()
        state.node.due.step(now=held.due - 1)
        assert [item.notice.data for item in state.inbox("alice").items] == [{"n": 2}]
        state.node.due.step(now=held.due)
        assert [item.notice.data for item in state.inbox("alice").items] == [{"n": 1}, {"n": 2}]
        assert state.broker.scheduled(DUE_NOTICE) == 0


def test_a_notice_due_in_quiet_hours_or_muted_meanwhile_is_held_or_dropped(app: Flask) -> None:
    """Preferences decide again when a scheduled notice falls due."""
    with app.app_context():
        state = get_state(app)
        later = state.notify("alice", {"n": 1}, delay=60)
        muted = state.notify("alice", {"n": 2}, delay=60, category="promo")
        state.set_preferences(
            "alice", {"quiet_hours": quiet_now(), "categories": {"promo": {"in_app": False}}}
        )
        state.node.due.step(now=time.time() + 61)
        assert state.inbox("alice").items == []
        assert state.broker.scheduled(DUE_NOTICE) == 1  # held again, under the same id
        assert state.broker.pending(DUE_NOTICE, t.cast(str, later.scheduled_id)) is not None
        assert state.broker.pending(DUE_NOTICE, t.cast(str, muted.scheduled_id)) is None


def test_remove_cancels_what_waits_and_removes_what_was_delivered(client: FlaskClient, app: Flask) -> None:
    """DELETE by scheduled_id cancels (or, once published, removes); by id removes; broadcasts: 409."""
    token = {"Authorization": f"Bearer {token_for('alice')}"}
    first = client.post("/users/alice/notices?delay=60", json={"n": 1}, headers=AUTH).get_json()
    second = client.post("/users/alice/notices?delay=60", json={"n": 2}, headers=AUTH).get_json()
    response = client.delete(f"/users/alice/notices/{first['scheduled_id']}", headers=token)
    assert response.get_json() == {"id": first["scheduled_id"], "cancelled": True}
    assert client.delete(f"/users/bob/notices/{second['scheduled_id']}", headers=AUTH).status_code == 404
    with app.app_context():
        state = get_state(app)
        state.node.due.step(now=time.time() + 61)
        (item,) = state.inbox("alice").items
        assert (item.notice.data, item.notice.meta["scheduled_id"]) == ({"n": 2}, second["scheduled_id"])
    response = client.delete(f"/users/alice/notices/{second['scheduled_id']}", headers=token)
    assert response.get_json() == {"id": item.notice.id, "removed": True, "unread": 0}
    kept = client.post("/users/alice/notices", json={"n": 3}, headers=AUTH).get_json()
    everyone = client.post("/broadcast", json={"n": 4}, headers=AUTH).get_json()
    assert client.delete(f"/users/alice/notices/{kept['id']}", headers=AUTH).get_json()["unread"] == 1
    assert_json_error(client.delete(f"/users/alice/notices/{everyone['id']}", headers=token), 409, "conflict")
    assert_json_error(client.delete(f"/users/alice/notices/{kept['id']}", headers=token), 404, "not_found")
    other = {"Authorization": f"Bearer {token_for('bob')}"}
    assert client.delete(f"/users/alice/notices/{everyone['id']}", headers=other).status_code == 403
    with app.app_context():
        assert [n.id for n in get_state(app).broker.replay("alice", "0").notices] == [everyone["id"]]


def test_preferences_need_the_users_token_or_a_publish_key(client: FlaskClient) -> None:
    """GET and PUT with the user's token or a publish key; another user's token is 403, none 401."""
    body = {"categories": {"promo": {"in_app": False}}, "quiet_hours": None}
    assert client.get("/users/alice/preferences", headers=AUTH).get_json() == {
        "categories": {},
        "default": {},
        "quiet_hours": None,
    }
    own = {"Authorization": f"Bearer {token_for('alice')}"}
    response = client.put("/users/alice/preferences", json=body, headers=own)
    assert response.get_json() == {**body, "default": {}}
    assert client.get("/users/alice/preferences", headers=AUTH).get_json()["categories"] == body["categories"]
    other = {"Authorization": f"Bearer {token_for('bob')}"}
    assert client.put("/users/alice/preferences", json=body, headers=other).status_code == 403
    assert client.get("/users/alice/preferences", headers={"Authorization": ""}).status_code == 401
    response = client.put("/users/alice/preferences", json=["no"], headers=own)
    assert_json_error(response, 400, "invalid_option")
    response = client.put("/users/alice/preferences", data="{}", headers=own)
    assert response.status_code == 415


def test_muted_broadcasts_leave_the_inbox_and_its_count(app: Flask) -> None:
    """A broadcast in a muted category is not listed or counted for that user; critical ones are."""
    with app.app_context():
        state = get_state(app)
        state.broadcast({"n": 1}, category="promo")
        state.broadcast({"n": 2}, category="promo", critical=True)
        state.broadcast({"n": 3})
        state.set_preferences("alice", {"categories": {"promo": {"in_app": False}}})
        page = state.inbox("alice")
        assert ([item.notice.data for item in page.items], page.unread) == ([{"n": 3}, {"n": 2}], 2)
        assert state.inbox("bob").unread == 3
        assert state.mark_all_read("alice").unread == 0


# -- on real servers -----------------------------------------------------------


def publish(server: Server, user: str, data: dict[str, t.Any], query: str = "") -> dict[str, t.Any]:
    """POST a notice with options; the answer (asserting 200 or 201)."""
    path = f"/users/{user}/notices" if user != "*" else "/broadcast"
    response = server.post(f"{path}{'?' + query if query else ''}", data)
    assert response.status_code in {200, 201}, response.text
    return t.cast(dict[str, t.Any], response.json())


def due_of(answer: dict[str, t.Any]) -> float:
    """The ``due_at`` of a publish answer, as Unix time."""
    return datetime.fromisoformat(answer["due_at"].replace("Z", "+00:00")).timestamp()


@pytest.mark.server
def test_scheduled_notices_arrive_live_once_and_not_before_due_under_four_workers(
    make_server: t.Callable[..., Server],
) -> None:
    """-w 4, tabs open: each scheduled notice reaches every tab once, at its time, then replays once."""
    server = make_server(workers=4)
    tabs = [subscribe(server.stream_url("alice")) for _ in range(3)]
    answers = [publish(server, "alice", {"n": n}, f"delay={1 + n * 0.2}") for n in range(5)]
    assert {a["status"] for a in answers} == {"scheduled"}
    for tab in tabs:
        got = tab.notices(5, timeout=15)
        assert [e.json()["data"] for e in got] == [{"n": n} for n in range(5)]
        assert [e.json()["scheduled_id"] for e in got] == [a["scheduled_id"] for a in answers]
        for event, answer in zip(got, answers, strict=True):
            stored = datetime.fromisoformat(event.json()["created_at"].replace("Z", "+00:00")).timestamp()
            assert stored >= due_of(answer) - 0.01  # not before its time
        tab.nothing(1.0)
    again = subscribe(server.stream_url("alice"), last_event_id="0")
    assert [e.json()["data"] for e in again.notices(5)] == [{"n": n} for n in range(5)]
    again.nothing(0.5)
    inbox = httpx.get(f"{server.url}/users/alice/notices", headers=AUTH, timeout=5).json()
    assert inbox["unread"] == 5
    for sub in (*tabs, again):
        sub.close()


@pytest.mark.server
def test_a_scheduled_notice_survives_kill_9_of_every_process(make_server: t.Callable[..., Server]) -> None:
    """Every gunicorn process killed with SIGKILL; a notice that fell due meanwhile arrives at start, once."""
    server = make_server(workers=2)
    answer = publish(server, "alice", {"n": 1}, "delay=1.5")
    pids = [t.cast(t.Any, server.proc).pid, *server.worker_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    t.cast(t.Any, server.proc).wait(10)
    server.proc = None
    wait_for(lambda: time.time() > due_of(answer) + 1, 10, "the due time to pass while nothing runs")
    server.start()
    tab = subscribe(server.stream_url("alice"), last_event_id="0")
    (event,) = tab.notices(1, timeout=10)
    assert event.json()["scheduled_id"] == answer["scheduled_id"]
    tab.nothing(1.0)
    tab.close()


@pytest.mark.server
def test_scheduled_notices_are_delivered_once_across_two_hosts_on_redis(
    make_server: t.Callable[..., Server], own_redis: RedisServer
) -> None:
    """Two instances on one Redis, a stream on each: a notice scheduled on either arrives once on both."""
    a = make_server(workers=2, store=own_redis.url)
    b = make_server(workers=2, store=own_redis.url)
    tabs = [subscribe(a.stream_url("alice")), subscribe(b.stream_url("alice"))]
    answers = [publish(a, "alice", {"n": 1}, "delay=1"), publish(b, "alice", {"n": 2}, "delay=1.2")]
    for tab in tabs:
        got = tab.notices(2, timeout=15)
        assert [e.json()["scheduled_id"] for e in got] == [x["scheduled_id"] for x in answers]
        tab.nothing(1.0)
        tab.close()


@pytest.mark.server
def test_preferences_reach_every_tab_and_mute_broadcasts_live_and_in_replay(
    make_server: t.Callable[..., Server],
) -> None:
    """A change is a `preferences` event in every tab; muted broadcasts skip only that user's streams."""
    server = make_server(workers=2)
    alice = [subscribe(server.stream_url("alice")) for _ in range(2)]
    bob = subscribe(server.stream_url("bob"))
    body = {"categories": {"promo": {"in_app": False}}}
    response = httpx.put(f"{server.url}/users/alice/preferences", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 200
    for tab in alice:
        assert tab.next("preferences").json()["categories"] == body["categories"]
    muted = publish(server, "*", {"n": 1}, "category=promo")
    critical = publish(server, "*", {"n": 2}, "category=promo&critical=true")
    plain = publish(server, "alice", {"n": 3}, "category=promo")
    assert plain["status"] == "suppressed"
    assert [int(e.id) for e in bob.notices(2)] == [muted["id"], critical["id"]]
    for tab in alice:
        assert [int(e.id) for e in tab.notices(1)] == [critical["id"]]
        tab.nothing(0.5)
    fresh = subscribe(server.stream_url("alice"), last_event_id="0")
    assert fresh.next("snapshot").json()["preferences"]["categories"] == body["categories"]
    assert [int(e.id) for e in fresh.notices(1)] == [critical["id"]]
    fresh.nothing(0.5)
    for sub in (*alice, bob, fresh):
        sub.close()


@pytest.mark.server
def test_removing_a_notice_reaches_every_tab(make_server: t.Callable[..., Server]) -> None:
    """DELETE of a delivered notice is a `remove` event in every tab, with the unread count."""
    server = make_server()
    tab = subscribe(server.stream_url("alice"))
    sent = delivered(server.post("/users/alice/notices", {"n": 1}))
    tab.notices(1)
    response = httpx.delete(f"{server.url}/users/alice/notices/{sent['id']}", headers=AUTH, timeout=5)
    assert response.json() == {"id": sent["id"], "removed": True, "unread": 0}
    assert tab.next("remove").json() == {"ids": [sent["id"]], "removed": True, "unread": 0}
    tab.close()


def test_python_api_takes_options_as_keywords(app: Flask) -> None:
    """notify, broadcast and notify_many take options as keyword arguments; unknown ones are a TypeError."""
    from sse_notify import broadcast, notify, notify_many

    with app.app_context():
        receipt = notify(
            "alice", {"n": 1}, category="news", send_at=datetime.fromtimestamp(time.time() + 60, timezone.utc)
        )
        assert (receipt.status, receipt.id) == ("scheduled", None)
        assert broadcast({"n": 2}, critical=True).notice is not None
        assert [r.status for r in notify_many([("a", {}), ("b", {})], delay=30)] == ["scheduled", "scheduled"]
        with pytest.raises(TypeError, match="colour"):
            notify("alice", {}, colour="red")  # type: ignore[call-arg]
        with pytest.raises(InvalidOption, match="delay"):
            notify("alice", {}, delay=-1)


# -- grouping ------------------------------------------------------------------


def test_a_batch_folds_its_own_notices_of_one_group(client: FlaskClient) -> None:
    """Two notices of one user and group in one batch are one entry; both receipts name it."""
    body = [
        {"user_id": "alice", "data": {"who": "ana"}, "group": "likes"},
        {"user_id": "bob", "data": {"who": "ana"}, "group": "likes"},
        {"user_id": "alice", "data": {"who": "ben"}, "group": "likes"},
    ]
    answer = client.post("/notices", json=body, headers=AUTH).get_json()
    assert answer[0]["id"] == answer[2]["id"] != answer[1]["id"]
    group = answer[2]["group"]
    assert (answer[2]["data"], group["count"], group["recent"]) == (
        {"who": "ben"},
        2,
        [{"who": "ben"}, {"who": "ana"}],
    )
    page = client.get("/users/alice/notices", headers=AUTH).get_json()
    assert ([n["id"] for n in page["notices"]], page["unread"]) == ([answer[2]["id"]], 1)


def test_a_read_group_entry_starts_again(client: FlaskClient) -> None:
    """After the entry is read, the next notice of its group is a new entry (unread 1 again)."""
    first = delivered(client.post("/users/alice/notices?group=likes", json={"n": 1}, headers=AUTH))
    client.post(f"/users/alice/notices/{first['id']}/read", headers=AUTH)
    second = delivered(client.post("/users/alice/notices?group=likes", json={"n": 2}, headers=AUTH))
    assert (second["group"]["count"], "replaces" in second["group"]) == (1, False)
    page = client.get("/users/alice/notices", headers=AUTH).get_json()
    assert ([n["id"] for n in page["notices"]], page["unread"]) == ([second["id"], first["id"]], 1)


@pytest.mark.server
@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_twenty_concurrent_publishes_from_four_workers_fold_into_one_entry(
    make_server: t.Callable[..., Server], own_redis: RedisServer, store: str
) -> None:
    """20 publishes at once to -w 4 (SQLite) or two hosts (Redis): one entry of 20, live and in replay."""
    if store == "redis":
        servers = [make_server(workers=2, store=own_redis.url), make_server(workers=2, store=own_redis.url)]
    else:
        servers = [make_server(workers=4)]
    tabs = [subscribe(server.stream_url("alice")) for server in servers]
    with ThreadPoolExecutor(20) as pool:
        answers = list(
            pool.map(
                lambda n: publish(servers[n % len(servers)], "alice", {"n": n}, "group=likes"), range(20)
            )
        )
    assert sorted(a["group"]["count"] for a in answers) == list(range(1, 21))
    newest = max(answers, key=lambda a: a["id"])
    for tab in tabs:
        # Each event is the entry as it is now. A worker's feed that reads the store after
        # several folds sends only the newest (the ones between were replaced already): the
        # count rises, and each event names the entry it replaces.
        events = [tab.next().json()]
        while events[-1]["group"]["count"] < 20:
            events.append(tab.next(timeout=15).json())
        counts = [e["group"]["count"] for e in events]
        assert counts == sorted(set(counts))
        assert all(e["group"]["replaces"] < e["id"] for e in events if "replaces" in e["group"])
        assert events[-1]["id"] == newest["id"]
        tab.nothing(0.5)
        tab.close()
    page = httpx.get(f"{servers[0].url}/users/alice/notices", headers=AUTH, timeout=5).json()
    assert ([n["id"] for n in page["notices"]], page["unread"]) == ([newest["id"]], 1)
    again = subscribe(servers[-1].stream_url("alice"), last_event_id="0")
    assert [int(e.id) for e in again.notices(1)] == [newest["id"]]
    again.nothing(0.5)
    again.close()


def test_grouped_data_keeps_nulls_and_long_integers_exact(client: FlaskClient) -> None:
    """The group's recent items are the data as sent: null, and integers past 2**64 (found by the fuzzer)."""
    data = {"who": None, "big": 123456789012345678901234567890}
    first = delivered(client.post("/users/alice/notices?group=g", json=data, headers=AUTH))
    second = delivered(client.post("/users/alice/notices?group=g", json={"n": 2}, headers=AUTH))
    assert first["group"]["recent"] == [data]
    assert second["group"]["recent"] == [{"n": 2}, data]


# -- snooze --------------------------------------------------------------------


def test_snooze_hides_a_notice_until_it_is_back_unread(client: FlaskClient, app: Flask) -> None:
    """Snoozed: not listed, not counted (listed with ?snoozed=true); when due, unread and listed again."""
    token = {"Authorization": f"Bearer {token_for('alice')}"}
    first = delivered(client.post("/users/alice/notices", json={"n": 1}, headers=AUTH))
    delivered(client.post("/users/alice/notices", json={"n": 2}, headers=AUTH))
    client.post(f"/users/alice/notices/{first['id']}/read", headers=AUTH)
    answer = client.post(f"/users/alice/notices/{first['id']}/snooze?seconds=60", headers=token).get_json()
    assert (answer["id"], answer["unread"]) == (first["id"], 1)
    until = datetime.fromisoformat(answer["snoozed_until"].replace("Z", "+00:00")).timestamp()
    assert abs(until - time.time() - 60) < 5
    page = client.get("/users/alice/notices", headers=token).get_json()
    assert ([n["data"] for n in page["notices"]], page["unread"]) == ([{"n": 2}], 1)
    snoozed = client.get("/users/alice/notices?snoozed=true", headers=token).get_json()
    assert [n["data"] for n in snoozed["notices"]] == [{"n": 1}]
    with app.app_context():
        get_state(app).node.due.step(now=until - 1)
        assert client.get("/users/alice/notices", headers=token).get_json()["unread"] == 1
        get_state(app).node.due.step(now=until + 0.001)  # (the answer's time is in milliseconds)
    page = client.get("/users/alice/notices", headers=token).get_json()
    assert ([n["data"] for n in page["notices"]], page["unread"]) == ([{"n": 2}, {"n": 1}], 2)
    assert page["notices"][1]["read"] is False  # it was read before: back as unread


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("", 400, "invalid_option"),
        ("seconds=0", 400, "invalid_option"),
        ("seconds=soon", 400, "invalid_option"),
        ("seconds=60&until=2027-01-01T00:00:00Z", 400, "invalid_option"),
        ("until=2020-01-01T00:00:00Z", 400, "invalid_option"),
        ("until=tomorrow", 400, "invalid_option"),
    ],
)
def test_a_bad_snooze_is_400(client: FlaskClient, query: str, status: int, error: str) -> None:
    """A snooze needs one time, in the future, within the limit."""
    sent = delivered(client.post("/users/alice/notices", json={"n": 1}, headers=AUTH))
    assert_json_error(
        client.post(f"/users/alice/notices/{sent['id']}/snooze?{query}", headers=AUTH), status, error
    )


def test_only_the_users_own_inbox_can_be_snoozed(client: FlaskClient) -> None:
    """Another user's notice is 404; another user's token is 403; a broadcast can be snoozed per user."""
    bobs = delivered(client.post("/users/bob/notices", json={"n": 1}, headers=AUTH))
    assert_json_error(
        client.post(f"/users/alice/notices/{bobs['id']}/snooze?seconds=5", headers=AUTH), 404, "not_found"
    )
    other = {"Authorization": f"Bearer {token_for('bob')}"}
    assert (
        client.post(f"/users/alice/notices/{bobs['id']}/snooze?seconds=5", headers=other).status_code == 403
    )
    everyone = delivered(client.post("/broadcast", json={"n": 2}, headers=AUTH))
    assert (
        client.post(f"/users/alice/notices/{everyone['id']}/snooze?seconds=5", headers=AUTH).status_code
        == 200
    )
    assert client.get("/users/alice/notices", headers=AUTH).get_json()["unread"] == 0
    assert client.get("/users/bob/notices", headers=AUTH).get_json()["unread"] == 2


@pytest.mark.server
def test_a_snoozed_notice_leaves_every_tab_and_comes_back_once(make_server: t.Callable[..., Server]) -> None:
    """-w 2, tabs on both workers: a `snooze` event in each, then the notice back once (no id), unread."""
    server = make_server(workers=2)
    tabs = [subscribe(server.stream_url("alice")) for _ in range(4)]
    sent = delivered(server.post("/users/alice/notices", {"n": 1}))
    for tab in tabs:
        tab.notices(1)
    response = httpx.post(
        f"{server.url}/users/alice/notices/{sent['id']}/snooze?seconds=1", headers=AUTH, timeout=5
    )
    assert response.status_code == 200
    for tab in tabs:
        assert tab.next("snooze").json() == {
            "ids": [sent["id"]],
            "snoozed": True,
            "until": response.json()["snoozed_until"],
            "unread": 0,
        }
    for tab in tabs:
        back = tab.next("notice", timeout=10)
        assert (back.id, back.json()["returned"], back.json()["read"], back.json()["unread"]) in {
            ("", "snooze", False, 1),
            (None, "snooze", False, 1),
            (str(sent["id"]), "snooze", False, 1),
        }
        assert back.json()["data"] == {"n": 1}
        tab.nothing(1.0)
        tab.close()


@pytest.mark.server
def test_a_snooze_survives_kill_9_of_every_process(make_server: t.Callable[..., Server]) -> None:
    """Snoozed, then every gunicorn process killed: after the time, at restart, it is back and unread."""
    server = make_server(workers=2)
    sent = delivered(server.post("/users/alice/notices", {"n": 1}))
    httpx.post(f"{server.url}/users/alice/notices/{sent['id']}/read", headers=AUTH, timeout=5)
    response = httpx.post(
        f"{server.url}/users/alice/notices/{sent['id']}/snooze?seconds=1.5", headers=AUTH, timeout=5
    )
    until = datetime.fromisoformat(response.json()["snoozed_until"].replace("Z", "+00:00")).timestamp()
    for pid in [t.cast(t.Any, server.proc).pid, *server.worker_pids()]:
        os.kill(pid, signal.SIGKILL)
    t.cast(t.Any, server.proc).wait(10)
    server.proc = None
    wait_for(lambda: time.time() > until + 1, 10, "the snooze to end while nothing runs")
    server.start()

    def inbox() -> dict[str, t.Any]:
        return t.cast(
            dict[str, t.Any], httpx.get(f"{server.url}/users/alice/notices", headers=AUTH, timeout=5).json()
        )

    wait_for(lambda: inbox()["unread"] == 1, 10, "the notice back, unread")
    assert [n["id"] for n in inbox()["notices"]] == [sent["id"]]


def test_a_retried_scheduled_publish_keeps_one_entry(client: FlaskClient, app: Flask) -> None:
    """The same Idempotency-Key sent again with a delay: the same scheduled_id, one entry, one notice."""
    headers = {**AUTH, "Idempotency-Key": "job-7"}
    first = client.post("/users/alice/notices?delay=60", json={"n": 1}, headers=headers).get_json()
    again = client.post("/users/alice/notices?delay=60", json={"n": 1}, headers=headers).get_json()
    assert first["scheduled_id"] == again["scheduled_id"]
    with app.app_context():
        state = get_state(app)
        assert state.broker.scheduled(DUE_NOTICE) == 1
        state.node.due.step(now=time.time() + 61)
        client.post("/users/alice/notices?delay=60", json={"n": 1}, headers=headers)  # a late retry
        state.node.due.step(now=time.time() + 122)
        assert [item.notice.data for item in state.inbox("alice").items] == [{"n": 1}]
