"""Where else: email and webhooks when a notice stays unread, with real SMTP and HTTP receivers (#15)."""

from __future__ import annotations

import os
import signal
import time
import typing as t
from pathlib import Path

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient

from sse_notify import SSENotify
from sse_notify.config import Settings
from sse_notify.delivery import Preferences
from sse_notify.errors import ConfigError
from sse_notify.fallback import FALLBACK, Timing, pick
from sse_notify.inbox import InboxState
from sse_notify.notices import Notice, stored_text
from sse_notify.service import get_state

from .receivers import WEBHOOK_SECRET, SMTPServer, WebhookReceiver
from .support import (
    AUTH,
    Server,
    assert_json_error,
    delivered,
    host_app,
    scrape,
    standalone_app,
    stays,
    token_for,
    wait_for,
)

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
#: Fast fallbacks for the tests: looked at 1 s after a window of 1 s ends, retried after 0.3 s.
FAST = {
    "SSE_NOTIFY_FALLBACK_AFTER": "1",
    "SSE_NOTIFY_FALLBACK_DIGEST": "1",
    "SSE_NOTIFY_FALLBACK_BACKOFF": "0.3",
}
SENDER = "Notices <notices@example.com>"


def notice(seq: int, **meta: t.Any) -> Notice:
    """A stored notice of alice's with delivery options ``meta``."""
    import orjson

    header = orjson.dumps(meta).decode() if meta else ""
    return Notice.stored(seq, "alice", "2027-01-15T08:00:00.000Z", stored_text(f'{{"n":{seq}}}', header))


# -- the rule ------------------------------------------------------------------------


def test_a_window_is_looked_at_after_it_ends_plus_the_delay() -> None:
    """Notices of one window go out together, ``after`` seconds after the window ends."""
    timing = Timing(after=300, digest=60)
    window = timing.window(NOW + 59.9)
    assert window == timing.window(NOW) == int(NOW // 60)
    assert timing.window(NOW + 60) == window + 1
    assert timing.bounds(window) == (NOW, NOW + 60)
    assert timing.due(window) == NOW + 60 + 300


def test_only_unread_notices_the_user_wants_on_the_channel_go() -> None:
    """Read, archived and snoozed notices stay; a category muted on one channel goes to the others."""
    notices = [notice(1), notice(2), notice(3), notice(4), notice(5, category="marketing")]
    state = InboxState(read={1: True}, archived=frozenset({2}), snoozed={3: NOW + 60})
    muted = Preferences.checked({"categories": {"marketing": {"email": False}}})
    assert pick(notices, state, muted, "email", NOW) == ([4], NOW)
    assert pick(notices, state, muted, "webhook", NOW) == ([4, 5], NOW)
    assert pick(notices[:3], state, muted, "webhook", NOW) is None
    everything_off = Preferences.checked({"default": {"email": False}})
    assert pick(notices, state, everything_off, "email", NOW) is None


def test_quiet_hours_hold_a_digest_unless_it_holds_a_critical_notice() -> None:
    """During quiet hours the send waits until they end; a critical notice goes at once, muted or not."""
    quiet = Preferences.checked(
        {
            "categories": {"news": {"email": False}},
            "quiet_hours": {"start": "07:00", "end": "09:00", "timezone": "UTC"},
        }
    )
    state = InboxState()
    assert pick([notice(1, category="news")], state, quiet, "email", NOW) is None
    assert pick([notice(1)], state, quiet, "email", NOW) == ([1], NOW + 3600)
    critical = [notice(1), notice(2, critical=True, category="news")]
    assert pick(critical, state, quiet, "email", NOW) == ([1, 2], NOW)


# -- settings, contacts, preferences -----------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SSE_NOTIFY_SMTP_URL": "mail.example.com:25"}, "SSE_NOTIFY_SMTP_URL must look like"),
        ({"SSE_NOTIFY_SMTP_URL": "smtp://mail.example.com?starttls=maybe"}, "SSE_NOTIFY_SMTP_URL"),
        ({"SSE_NOTIFY_SMTP_URL": "smtp://mail.example.com"}, "SSE_NOTIFY_EMAIL_FROM must be"),
        (
            {"SSE_NOTIFY_SMTP_URL": "smtp://mail.example.com", "SSE_NOTIFY_EMAIL_FROM": "nobody"},
            "SSE_NOTIFY_EMAIL_FROM must be",
        ),
        ({"SSE_NOTIFY_WEBHOOK_URL": "ftp://example.com/x"}, "SSE_NOTIFY_WEBHOOK_URL must be an http"),
        ({"SSE_NOTIFY_WEBHOOK_URL": "https://example.com/x"}, "SSE_NOTIFY_WEBHOOK_SECRET must be set"),
        (
            {"SSE_NOTIFY_WEBHOOK_URL": "https://example.com/x", "SSE_NOTIFY_WEBHOOK_SECRET": "whsec_short"},
            "SSE_NOTIFY_WEBHOOK_SECRET must be set",
        ),
        ({"SSE_NOTIFY_FALLBACK_AFTER": 0}, "SSE_NOTIFY_FALLBACK_AFTER must be a positive number"),
    ],
)
def test_channel_settings_are_checked_at_start(config: dict[str, t.Any], message: str) -> None:
    """A channel set up halfway or wrongly stops the start with a message that names the setting."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_config(config)


def test_channels_are_off_by_default_and_on_when_set() -> None:
    """No channel besides in_app until its setting is given."""
    assert Settings.from_config({}).fallback_channels == ()
    on = Settings.from_config(
        {
            "SSE_NOTIFY_SMTP_URL": "smtps://user:pass@mail.example.com",
            "SSE_NOTIFY_EMAIL_FROM": SENDER,
            "SSE_NOTIFY_WEBHOOK_URL": "https://example.com/hooks",
            "SSE_NOTIFY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
    )
    assert on.fallback_channels == ("email", "webhook")


def test_contacts_are_kept_with_a_publish_key_only(client: FlaskClient) -> None:
    """PUT, GET and DELETE /users/<id>/contacts need a publish key: the user's own token is refused."""
    assert client.get("/users/alice/contacts").get_json() == {}
    answer = client.put("/users/alice/contacts", json={"email": "alice@example.com"})
    assert (answer.status_code, answer.get_json()) == (200, {"email": "alice@example.com"})
    assert client.get("/users/alice/contacts").get_json() == {"email": "alice@example.com"}
    own = {"Authorization": f"Bearer {token_for('alice')}"}
    for method in ("get", "put", "delete"):
        refused = getattr(client, method)("/users/alice/contacts", headers=own, json={"email": "x@y.z"})
        assert refused.status_code in (401, 403), refused.get_data(as_text=True)
        assert refused.get_json()["error"] in ("unauthorized", "forbidden")
    assert client.delete("/users/alice/contacts").status_code == 204
    assert client.get("/users/alice/contacts").get_json() == {}
    assert client.put("/users/alice/contacts", json={"email": None}).get_json() == {}


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not an address"},
        {"email": "a@b@c"},
        {"email": "ada@example.com\r\nBcc: all@example.com"},
        {"email": 42},
        {"phone": "+123"},
        ["ada@example.com"],
    ],
)
def test_contacts_refuse_what_is_not_an_address(client: FlaskClient, body: t.Any) -> None:
    """A malformed address, an unknown field or a body that is not an object: 400 invalid_field."""
    answer = client.put("/users/alice/contacts", json=body)
    assert_json_error(answer, 400, "invalid_field")
    assert client.get("/users/alice/contacts").get_json() == {}


def test_preferences_name_the_fallback_channels(client: FlaskClient) -> None:
    """Preferences take email, push and webhook per category; an unknown channel is refused."""
    body = {"categories": {"marketing": {"email": False, "push": False, "webhook": True}}}
    answer = client.put("/users/alice/preferences", json=body)
    assert answer.status_code == 200
    assert answer.get_json()["categories"] == body["categories"]
    refused = client.put("/users/alice/preferences", json={"categories": {"marketing": {"sms": False}}})
    assert "unknown channel 'sms'" in assert_json_error(refused, 400, "invalid_option")["detail"]


# -- email, in a host app ------------------------------------------------------------------


def test_a_host_app_supplies_addresses_and_its_own_templates(tmp_path: Path, smtp: SMTPServer) -> None:
    """The contacts hook gives the address; the host's templates/sse_notify/email/ replace ours."""
    templates = tmp_path / "templates" / "sse_notify" / "email"
    templates.mkdir(parents=True)
    (templates / "subject.txt").write_text("[Acme] {{ count }} new for {{ user_id }}")
    app = host_app(
        tmp_path / "instance",
        root_path=tmp_path,
        SSE_NOTIFY_SMTP_URL=smtp.url,
        SSE_NOTIFY_EMAIL_FROM=SENDER,
        SSE_NOTIFY_FALLBACK_AFTER=0.2,
        SSE_NOTIFY_FALLBACK_DIGEST=0.5,
    )
    asked: list[str] = []
    ext = SSENotify()

    @ext.contacts
    def contacts(user_id: str) -> dict[str, str] | None:
        asked.append(user_id)
        return {"email": f"{user_id}@acme.example"} if user_id == "alice" else None

    ext.init_app(app)
    state = get_state(app)
    state.node.start_due_work()  # (what gunicorn's workers do at start)
    client = app.test_client()
    for title in ("Build <b>finished</b>", "Deploy"):
        delivered(
            client.post(
                "/users/alice/notices", json={"title": title, "url": "https://ci.example/1"}, headers=AUTH
            )
        )
    delivered(client.post("/users/bob/notices", json={"title": "no address"}, headers=AUTH))
    (mail,) = smtp.wait(1)
    stays(lambda: len(smtp.mails) == 1, 1.5, "no second email (bob has no address)")
    assert mail.recipients == ["alice@acme.example"]
    assert mail.subject == "[Acme] 2 new for alice"
    assert mail.message["From"] == SENDER
    assert mail.message["Auto-Submitted"] == "auto-generated"
    text, html = mail.part("plain"), mail.part("html")
    assert "Build <b>finished</b>" in text
    assert "Deploy" in text
    assert "Build &lt;b&gt;finished&lt;/b&gt;" in html
    assert '<a href="https://ci.example/1">' in html
    assert set(asked) == {"alice", "bob"}
    state.node.shutdown()


# -- real servers ------------------------------------------------------------------------------


def away_server(make_server: t.Callable[..., Server], smtp: SMTPServer | None, **env: str) -> Server:
    """A gunicorn server with fast fallbacks to ``smtp`` (and what ``env`` adds)."""
    if smtp is not None:
        env = {"SSE_NOTIFY_SMTP_URL": smtp.url, "SSE_NOTIFY_EMAIL_FROM": SENDER, **env}
    return make_server(**{**FAST, **env})


def with_address(server: Server, *users: str) -> None:
    """Give each user an address ``<user>@example.com``."""
    for user in users:
        answer = httpx.put(
            f"{server.url}/users/{user}/contacts", json={"email": f"{user}@example.com"}, headers=AUTH
        )
        assert answer.status_code == 200, answer.text


def counter(server: Server, what: str, channel: str) -> float:
    """``sse_notify_fallback_<what>_total{channel}`` now."""
    return scrape(server).get((f"sse_notify_fallback_{what}_total", (("channel", channel),)), 0.0)


@pytest.mark.server
def test_an_away_user_gets_exactly_one_email_with_the_notice(
    make_server: t.Callable[..., Server], smtp: SMTPServer
) -> None:
    """Two workers, three users with no stream open: each gets one email with their notice, once."""
    server = away_server(make_server, smtp, workers=2)
    users = ["alice", "bob", "carol"]
    with_address(server, *users)
    sent = {user: server.publish(user, {"title": f"Hello {user}", "text": "unread"}) for user in users}
    started = time.monotonic()
    mails = smtp.wait(3)
    assert time.monotonic() - started >= 0.5  # (not before the delay)
    stays(lambda: len(smtp.mails) == 3, 3.0, "no email sent twice")
    by_user = {mail.recipients[0].split("@")[0]: mail for mail in mails}
    assert sorted(by_user) == users
    for user, mail in by_user.items():
        assert mail.subject == f"Hello {user}"
        assert f"Hello {user}" in mail.part("plain")
        assert sent[user]["created_at"] in mail.part("plain")
    wait_for(lambda: counter(server, "sent", "email") == 3, 5, "sent counted per email")


@pytest.mark.server
def test_a_notice_read_in_time_sends_nothing(make_server: t.Callable[..., Server], smtp: SMTPServer) -> None:
    """A notice marked read (or archived) before the delay ends goes to no other channel."""
    server = away_server(make_server, smtp, SSE_NOTIFY_FALLBACK_AFTER="2")
    with_address(server, "alice", "bob")
    read = server.publish("alice", {"title": "Read already"})
    archived = server.publish("bob", {"title": "Archived already"})
    for user, sent, action in (("alice", read, "read"), ("bob", archived, "archive")):
        answer = httpx.post(
            f"{server.url}/users/{user}/notices/{sent['id']}/{action}", headers=AUTH, timeout=5
        )
        assert answer.status_code == 200, answer.text
    unread = server.publish("alice", {"title": "still unread"})
    (mail,) = smtp.wait(1, timeout=15)
    assert "still unread" in mail.part("plain")
    assert "Read already" not in mail.part("plain")
    assert unread["id"] > read["id"]
    stays(lambda: len(smtp.mails) == 1, 2.5, "nothing for the read or archived notice")


@pytest.mark.server
def test_notices_of_one_window_go_out_as_one_digest(
    make_server: t.Callable[..., Server], smtp: SMTPServer, webhook: WebhookReceiver
) -> None:
    """Several notices in one window: one email listing all, one webhook call with the count."""
    server = away_server(
        make_server,
        smtp,
        SSE_NOTIFY_FALLBACK_DIGEST="3",
        SSE_NOTIFY_WEBHOOK_URL=webhook.url,
        SSE_NOTIFY_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    with_address(server, "alice")
    wait_for(lambda: time.time() % 3 < 0.5, 4, "a window to begin")
    titles = [f"Notice {n}" for n in range(4)]
    sent = [server.publish("alice", {"title": title}) for title in titles]
    (mail,) = smtp.wait(1, timeout=15)
    assert mail.subject == "You have 4 unread notices"
    assert all(title in mail.part("plain") and title in mail.part("html") for title in titles)
    (hook,) = webhook.wait(1)
    assert hook.body["type"] == "notices.unread"
    assert hook.body["data"]["count"] == 4
    assert [n["id"] for n in hook.body["data"]["notices"]] == [n["id"] for n in sent]
    assert hook.body["data"]["notices"][0]["data"] == {"title": "Notice 0"}
    stays(lambda: len(smtp.mails) == 1 and len(webhook.ids) == 1, 2.0, "one message per channel")
    assert webhook.refused == []


@pytest.mark.server
def test_a_muted_category_skips_that_channel_and_critical_ignores_it(
    make_server: t.Callable[..., Server], smtp: SMTPServer, webhook: WebhookReceiver
) -> None:
    """{"marketing": {"email": false}}: no email, the webhook still; a critical notice emails anyway."""
    server = away_server(
        make_server, smtp, SSE_NOTIFY_WEBHOOK_URL=webhook.url, SSE_NOTIFY_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    with_address(server, "alice", "bob")
    for user in ("alice", "bob"):
        body = {"categories": {"marketing": {"email": False}}}
        answer = httpx.put(f"{server.url}/users/{user}/preferences", json=body, headers=AUTH, timeout=5)
        assert answer.status_code == 200
    delivered(server.post("/users/alice/notices?category=marketing", {"title": "Sale"}))
    delivered(server.post("/users/bob/notices?category=marketing&critical=true", {"title": "Card expired"}))
    hooks = webhook.wait(2)
    assert sorted(h.body["data"]["user_id"] for h in hooks) == ["alice", "bob"]
    (mail,) = smtp.wait(1)
    assert mail.recipients == ["bob@example.com"]
    assert mail.subject == "Card expired"
    stays(lambda: len(smtp.mails) == 1, 2.0, "no email for alice's muted category")


@pytest.mark.server
def test_smtp_down_is_retried_with_backoff_until_it_is_back(
    make_server: t.Callable[..., Server], smtp: SMTPServer
) -> None:
    """SMTP unreachable: publishing still answers 201 at once; the email goes once SMTP is back."""
    server = away_server(make_server, smtp)
    with_address(server, "alice")
    smtp.stop()
    started = time.monotonic()
    server.publish("alice", {"title": "while SMTP is down"})
    assert time.monotonic() - started < 2
    wait_for(lambda: counter(server, "retried", "email") >= 2, 20, "the send to be retried")
    assert "while SMTP is down" not in str(smtp.mails)
    smtp.start()
    (mail,) = smtp.wait(1, timeout=20)
    assert mail.subject == "while SMTP is down"
    stays(lambda: len(smtp.mails) == 1, 2.0, "sent once")
    wait_for(lambda: counter(server, "sent", "email") == 1, 5, "sent counted")
    assert counter(server, "failed", "email") == 0
    assert "email to alice failed" in server.log()


@pytest.mark.server
def test_an_smtp_refusal_for_good_gives_up_and_says_so(
    make_server: t.Callable[..., Server], smtp: SMTPServer
) -> None:
    """A 554 answer is not tried again: counted as failed and logged."""
    server = away_server(make_server, smtp)
    with_address(server, "alice")
    smtp.refuse.append(554)
    server.publish("alice", {"title": "refused"})
    wait_for(lambda: counter(server, "failed", "email") == 1, 15, "the send given up")
    stays(lambda: not smtp.mails and not smtp.refuse, 1.5, "no second try")
    assert counter(server, "retried", "email") == 0
    assert "gave up" in server.log()


@pytest.mark.server
def test_a_failing_webhook_is_retried_under_the_same_message_id(
    make_server: t.Callable[..., Server], webhook: WebhookReceiver
) -> None:
    """500 twice, then 204: three signed calls with one webhook-id, counted as two retries and one send."""
    server = away_server(
        make_server, None, SSE_NOTIFY_WEBHOOK_URL=webhook.url, SSE_NOTIFY_WEBHOOK_SECRET=WEBHOOK_SECRET
    )
    webhook.answers.extend([500, 503])
    sent = server.publish("alice", {"title": "hook"})
    (hook,) = webhook.wait(1, timeout=20)
    assert webhook.ids == [hook.headers["webhook-id"]] * 3
    assert webhook.refused == []
    assert hook.body["data"]["notices"][0]["id"] == sent["id"]
    wait_for(lambda: counter(server, "sent", "webhook") == 1, 5, "sent counted")
    assert counter(server, "retried", "webhook") == 2


@pytest.mark.server
def test_a_fallback_survives_kill_9_and_is_sent_once(
    make_server: t.Callable[..., Server], smtp: SMTPServer
) -> None:
    """Every gunicorn process killed before the notice was due: after a restart it is emailed, once."""
    server = away_server(make_server, smtp, workers=2, SSE_NOTIFY_FALLBACK_AFTER="1.5")
    with_address(server, "alice")
    server.publish("alice", {"title": "survives"})
    for pid in [t.cast(t.Any, server.proc).pid, *server.worker_pids()]:
        os.kill(pid, signal.SIGKILL)
    t.cast(t.Any, server.proc).wait(10)
    server.proc = None
    time.sleep(3)
    assert smtp.mails == []
    server.start()
    (mail,) = smtp.wait(1, timeout=20)
    assert mail.subject == "survives"
    stays(lambda: len(smtp.mails) == 1, 3.0, "sent once")


def test_fallback_is_not_wired_when_no_channel_is_set(app: Flask) -> None:
    """With no channel set up, publishing keeps no fallback entries (and costs nothing more)."""
    client = app.test_client()
    delivered(client.post("/users/alice/notices", json={"n": 1}, headers=AUTH))
    state = get_state(app)
    assert state.fallbacks is None
    assert state.broker.scheduled(FALLBACK) == 0


def test_a_publish_keeps_one_window_entry_per_user_and_window(tmp_path: Path, smtp: SMTPServer) -> None:
    """Many notices of one user in one window keep one scheduler entry; a batch to several users, one each."""
    app = standalone_app(
        f"sqlite:///{tmp_path}/n.sqlite3",
        SSE_NOTIFY_SMTP_URL=smtp.url,
        SSE_NOTIFY_EMAIL_FROM=SENDER,
        SSE_NOTIFY_FALLBACK_DIGEST=600,
    )
    client = app.test_client()
    for n in range(5):
        delivered(client.post("/users/alice/notices", json={"n": n}, headers=AUTH))
    batch = [{"user_id": u, "data": {"n": 1}} for u in ("bob", "carol", "alice")]
    assert client.post("/notices", json=batch, headers=AUTH).status_code == 201
    assert client.post("/broadcast", json={"n": 1}, headers=AUTH).status_code == 201
    assert get_state(app).broker.scheduled(FALLBACK) in (3, 6)  # (6: the window turned meanwhile)
