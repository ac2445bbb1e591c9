"""Where else: email, Web Push and webhooks when a notice stays unread, with real receivers (#15).

SMTP is aiosmtpd, the webhook receiver verifies with the standardwebhooks package, and a push
service that speaks RFC 8030/8291/8292 stands in for browsers' (``push_service.py``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from flask import Flask, has_app_context
from flask.testing import FlaskClient
from playwright.sync_api import BrowserContext, expect

from sse_notify import SSENotify
from sse_notify.config import Settings
from sse_notify.delivery import Preferences
from sse_notify.errors import ConfigError
from sse_notify.fallback import FALLBACK, Timing, pick
from sse_notify.inbox import InboxState
from sse_notify.notices import Notice, stored_text
from sse_notify.service import get_state

from .browser import TIMEOUT
from .push_service import PushService, Subscription
from .receivers import WEBHOOK_SECRET, SMTPServer, WebhookReceiver, self_signed
from .support import (
    AUTH,
    PUBLISH_KEY,
    RedisServer,
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
    asked: list[tuple[str, bool]] = []
    ext = SSENotify()

    @ext.contacts
    def contacts(user_id: str) -> dict[str, str] | None:
        asked.append((user_id, has_app_context()))
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
    assert set(asked) == {("alice", True), ("bob", True)}  # (in the app's context: its database works)
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


# -- Web Push ----------------------------------------------------------------------------------


def subscribe_device(server_url: str, service: PushService, user: str) -> Subscription:
    """What a page's enablePush() does: get the key, subscribe at the push service, hand it over."""
    key = httpx.get(f"{server_url}/push/public-key", timeout=5).json()["public_key"]
    subscription = service.subscribe(key)
    own = {"Authorization": f"Bearer {token_for(user)}"}
    answer = httpx.post(
        f"{server_url}/users/{user}/push-subscriptions", json=subscription.info(), headers=own, timeout=5
    )
    assert answer.status_code == 201, answer.text
    return subscription


def test_push_is_off_until_set_up(client: FlaskClient) -> None:
    """With SSE_NOTIFY_PUSH off, the key and the subscriptions answer 404."""
    assert_json_error(client.get("/push/public-key"), 404, "not_found")
    body = {"endpoint": "https://push.example/1", "keys": {"p256dh": "x", "auth": "y"}}
    assert_json_error(client.post("/users/alice/push-subscriptions", json=body), 404, "not_found")


def test_a_development_server_makes_its_vapid_key_and_production_needs_one(tmp_path: Path) -> None:
    """Push in development: a key in the instance folder (mode 600), the same one after a restart."""
    app = host_app(tmp_path / "instance", SSE_NOTIFY_PUSH=True)
    SSENotify(app)
    key = app.test_client().get("/push/public-key").get_json()["public_key"]
    pem = tmp_path / "instance" / "vapid_private_key.pem"
    assert pem.stat().st_mode & 0o777 == 0o600
    again = host_app(tmp_path / "instance", SSE_NOTIFY_PUSH=True)
    SSENotify(again)
    assert again.test_client().get("/push/public-key").get_json()["public_key"] == key
    assert len(base64.urlsafe_b64decode(key + "=")) == 65
    with pytest.raises(ConfigError, match="SSE_NOTIFY_VAPID_PRIVATE_KEY"):
        Settings.from_config({"SSE_NOTIFY_PUSH": True, "SSE_NOTIFY_PRODUCTION": True})
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot read a VAPID private key"):
        SSENotify(
            host_app(
                tmp_path / "other",
                SSE_NOTIFY_PUSH=True,
                SSE_NOTIFY_VAPID_PRIVATE_KEY=str(tmp_path / "bad.pem"),
            )
        )


def test_workers_making_the_development_key_at_once_all_use_one(tmp_path: Path) -> None:
    """Six processes that find no key at the same moment each make one; they all end up reading the same."""
    instance, go = tmp_path / "instance", tmp_path / "go"
    code = (
        "import os, sys, time; from sse_notify.channels.push import vapid_key, public_key\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[2]): time.sleep(0.0005)\n"
        "print(public_key(vapid_key('', sys.argv[1])))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(instance), str(go)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    for proc in procs:
        assert t.cast(t.IO[str], proc.stdout).readline() == "ready\n"
    go.touch()  # all at once
    keys = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(keys) == 1
    assert [p.name for p in instance.iterdir()] == ["vapid_private_key.pem"]  # (no temporary file left)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"keys": {}}, "endpoint"),
        ({"endpoint": "ftp://push.example/1", "keys": {}}, "endpoint"),
        ({"endpoint": "https://push.example/1"}, "keys"),
        (
            {
                "endpoint": "https://push.example/1",
                "keys": {"p256dh": "AAAA", "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
            },
            "keys.p256dh",
        ),
        (
            {
                "endpoint": "https://push.example/1",
                "keys": {"p256dh": "C" * 87, "auth": "AAAAAAAAAAAAAAAAAAAAAA"},
            },
            "keys.p256dh",
        ),
        (
            {"endpoint": "https://push.example/1", "keys": {"p256dh": "BA" + "A" * 85, "auth": "!!"}},
            "keys.auth",
        ),
        (["https://push.example/1"], "subscription"),
    ],
)
def test_push_subscriptions_are_checked(tmp_path: Path, body: t.Any, field: str) -> None:
    """A subscription that is not what a browser gives: 400 invalid_field, naming the field."""
    app = standalone_app("memory://", SSE_NOTIFY_PUSH=True)
    own = {"Authorization": f"Bearer {token_for('alice')}"}
    answer = app.test_client().post("/users/alice/push-subscriptions", json=body, headers=own)
    assert field in assert_json_error(answer, 400, "invalid_field")["detail"]


def test_push_subscriptions_belong_to_their_user(tmp_path: Path) -> None:
    """The user's token (or a publish key) keeps and forgets them; another user's token is refused."""
    service = PushService()
    app = standalone_app("memory://", SSE_NOTIFY_PUSH=True)
    client = app.test_client()
    key = client.get("/push/public-key").get_json()["public_key"]
    info = service.subscribe(key).info()
    alice = {"Authorization": f"Bearer {token_for('alice')}"}
    bob = {"Authorization": f"Bearer {token_for('bob')}"}
    assert client.post("/users/alice/push-subscriptions", json=info, headers=bob).status_code == 403
    assert client.post("/users/alice/push-subscriptions", json=info, headers=alice).status_code == 201
    assert client.post("/users/alice/push-subscriptions", json=info, headers=alice).status_code == 200
    gone = {"endpoint": info["endpoint"]}
    assert client.delete("/users/alice/push-subscriptions", json=gone, headers=bob).status_code == 403
    assert client.delete("/users/alice/push-subscriptions", json=gone, headers=alice).status_code == 204
    assert_json_error(
        client.delete("/users/alice/push-subscriptions", json=gone, headers=AUTH), 404, "not_found"
    )


def test_a_user_keeps_at_most_ten_devices(tmp_path: Path) -> None:
    """An eleventh subscription replaces the oldest."""
    from sse_notify.channels.push import MAX_SUBSCRIPTIONS, PUSH

    service = PushService()
    app = standalone_app("memory://", SSE_NOTIFY_PUSH=True)
    client = app.test_client()
    key = client.get("/push/public-key").get_json()["public_key"]
    infos = [service.subscribe(key).info() for _ in range(MAX_SUBSCRIPTIONS + 1)]
    for info in infos:
        assert client.post("/users/alice/push-subscriptions", json=info, headers=AUTH).status_code == 201
    kept = get_state(app).broker.user_records(PUSH, "alice")
    assert sorted(kept) == sorted(info["endpoint"] for info in infos[1:])


@pytest.mark.server
def test_an_away_user_gets_one_push_per_device_with_a_count(make_server: t.Callable[..., Server]) -> None:
    """Two devices, three notices in one window: each device gets one encrypted, VAPID-signed push."""
    service = PushService().start()
    try:
        server = away_server(  # (two workers: the key fetched from one, the push sent by either)
            make_server,
            None,
            workers=2,
            SSE_NOTIFY_PUSH="true",
            SSE_NOTIFY_FALLBACK_DIGEST="3",
            SSE_NOTIFY_VAPID_SUBJECT="mailto:ops@example.com",
            SSE_NOTIFY_PUSH_TTL="600",
        )
        devices = [subscribe_device(server.url, service, "alice") for _ in range(2)]
        wait_for(lambda: time.time() % 3 < 0.5, 4, "a window to begin")
        sent = [
            server.publish("alice", {"title": f"Build {n}", "url": "https://ci.example/b"}) for n in range(3)
        ]
        pushes = service.wait(2)
        stays(lambda: len(service.pushes) == 2, 2.0, "one push per device")
        assert sorted(p.subscription for p in pushes) == sorted(d.id for d in devices)
        for push in pushes:
            assert (push.ttl, push.urgency, push.topic) == (600, "normal", "notices")
            assert push.claims["sub"] == "mailto:ops@example.com"
            assert push.payload["count"] == 3
            assert push.payload["id"] == sent[-1]["id"]
            assert push.payload["title"] == "Build 2"
            assert push.payload["ids"] == [n["id"] for n in sent]
        assert service.refused == []
        wait_for(lambda: counter(server, "sent", "push") == 1, 5, "one send counted")
    finally:
        service.stop()


@pytest.mark.server
def test_a_gone_device_is_deleted_and_a_failing_one_retried_alone(
    make_server: t.Callable[..., Server],
) -> None:
    """410 deletes that subscription; 503 is tried again for that device only; critical is high urgency."""
    service = PushService().start()
    try:
        server = away_server(make_server, None, SSE_NOTIFY_PUSH="true")
        gone, *live = (subscribe_device(server.url, service, "alice") for _ in range(3))
        service.gone.add(gone.id)
        service.answers.append(503)
        delivered(server.post("/users/alice/notices?critical=true", {"title": "Card expired"}))
        wait_for(
            lambda: {p.subscription for p in service.pushes} == {d.id for d in live}, 20, "both live devices"
        )
        stays(lambda: len(service.pushes) == 2, 2.0, "no device twice")
        assert {p.urgency for p in service.pushes} == {"high"}
        assert sorted(status for status, _ in service.refused) == [410, 503]  # (in the store's order)
        assert counter(server, "retried", "push") == 1
        server.publish("alice", {"title": "later"})
        wait_for(lambda: len(service.pushes) == 4, 20, "the next push to the two live devices")
        assert sorted(status for status, _ in service.refused) == [410, 503]  # (the gone one was deleted)
    finally:
        service.stop()


@pytest.mark.browser
@pytest.mark.server
def test_the_service_worker_shows_a_pushed_notice(
    context: BrowserContext, make_server: t.Callable[..., Server]
) -> None:
    """In Chromium: the service worker registers, and a push event delivered to it shows a notification."""
    server = away_server(make_server, None, SSE_NOTIFY_PUSH="true")
    context.grant_permissions(["notifications"], origin=server.url)
    page = context.new_page()
    page.goto(server.url + "/")
    cdp = context.new_cdp_session(page)
    registrations: list[dict[str, t.Any]] = []
    versions: dict[str, dict[str, t.Any]] = {}
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated", lambda event: registrations.extend(event["registrations"])
    )
    cdp.on(
        "ServiceWorker.workerVersionUpdated",
        lambda event: versions.update({v["versionId"]: v for v in event["versions"]}),
    )
    cdp.send("ServiceWorker.enable")
    scope = page.evaluate(
        "navigator.serviceWorker.register('/sse-notify-sw.js').then(() => navigator.serviceWorker.ready)"
        ".then((r) => r.scope)"
    )
    assert scope == server.url + "/"
    wait_for(lambda: any(r["scopeURL"] == scope for r in registrations), 10, "the registration over CDP")
    registration = next(r for r in registrations if r["scopeURL"] == scope)
    wait_for(  # (a push goes to the active version once it is activated)
        lambda: (
            page.evaluate("navigator.serviceWorker.ready.then((r) => r.active && r.active.state)")
            == "activated"
        ),
        20,
        f"the service worker to be activated ({versions})",
    )
    shown_js = (
        "navigator.serviceWorker.ready.then((r) => r.getNotifications())"
        ".then((ns) => ns.map((n) => ({title: n.title, body: n.body, tag: n.tag, data: n.data})))"
    )

    def push(payload: dict[str, t.Any], title: str) -> list[dict[str, t.Any]]:
        """Deliver a push over CDP until the notification ``title`` shows (a worker that has just
        activated sometimes drops the first delivery of DevTools; each is a push event of its own)."""
        message = {"origin": server.url, "registrationId": registration["registrationId"]}
        for _ in range(4):
            cdp.send("ServiceWorker.deliverPushMessage", {**message, "data": json.dumps(payload)})
            try:
                return t.cast(
                    list[dict[str, t.Any]],
                    wait_for(lambda: [n for n in page.evaluate(shown_js) if n["title"] == title], 5, title),
                )
            except AssertionError:
                continue
        raise AssertionError(f"no notification {title!r} after 4 pushes")

    payload = {
        "user_id": "alice",
        "count": 1,
        "id": 7,
        "title": "Build finished",
        "text": "main is green",
        "url": "https://ci.example/7",
        "ids": [7],
    }
    assert push(payload, "Build finished") == [
        {
            "title": "Build finished",
            "body": "main is green",
            "tag": "sse-notify:alice",
            "data": {"url": "https://ci.example/7", "id": 7, "ids": [7], "count": 1},
        }
    ]
    payload.update(count=3, title="Deploy done")
    push(payload, "3 unread notices")
    shown = page.evaluate(shown_js)
    assert [(n["title"], n["body"]) for n in shown] == [
        ("3 unread notices", "Newest: Deploy done")
    ]  # replaced


@pytest.mark.browser
@pytest.mark.server
def test_the_demo_page_sets_channels_an_address_and_sends_a_test_email(
    context: BrowserContext, make_server: t.Callable[..., Server], smtp: SMTPServer
) -> None:
    """With email on, the page shows a column per channel, keeps the address, and sends a test email."""
    server = away_server(make_server, smtp, SSE_NOTIFY_PUSH="true")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/#key={quote(PUBLISH_KEY, safe='')}")
    expect(page.locator("#status")).to_have_text("live", timeout=TIMEOUT)
    expect(page.locator("#prefs-categories .head")).to_have_text(["", "In app", "Email", "Push"])
    promo_email = page.get_by_label("promo: Email")
    expect(promo_email).to_be_checked()
    promo_email.uncheck()
    wait_for(
        lambda: (
            httpx.get(f"{server.url}/users/alice/preferences", headers=AUTH, timeout=5).json()["categories"]
            == {"promo": {"email": False}}
        ),
        10,
        "the preference stored",
    )
    expect(page.get_by_label("promo: In app")).to_be_checked()
    page.locator("#email-address").fill("alice@example.com")
    page.locator("#email-save").click()
    expect(page.locator("#email-hint")).to_have_text("Saved: unread notices go to alice@example.com.")
    page.locator("#email-test").click()
    expect(page.locator("#email-hint")).to_have_text("Sent to alice@example.com.", timeout=TIMEOUT)
    (mail,) = smtp.wait(1)
    assert mail.subject == "Test email from sse_notify"
    page.locator("#email-test").click()
    expect(page.locator("#email-hint")).to_contain_text("Not sent: one test email a minute")
    page.reload()
    expect(page.locator("#email-address")).to_have_value("alice@example.com", timeout=TIMEOUT)
    # Push: the page registers the service worker and fetches the server's key; the subscription
    # itself needs the browser's push service, which this machine cannot reach (docs/PRODUCTION.md).
    context.grant_permissions(["notifications"], origin=server.url)
    with page.expect_request(lambda request: request.url.endswith("/push/public-key")):
        page.locator("#push-on").click()
    expect(page.locator("#push-hint")).to_contain_text("Push is not on:", timeout=TIMEOUT)
    scope = page.evaluate("navigator.serviceWorker.getRegistration().then((r) => r && r.scope)")
    assert scope == server.url + "/"
    assert not errors


def test_a_test_email_needs_email_on_and_an_address(tmp_path: Path, smtp: SMTPServer) -> None:
    """404 when email is off, 409 without an address, 502 when SMTP refuses, 200 once it takes it."""
    off = standalone_app("memory://").test_client()
    assert_json_error(off.post("/users/alice/channels/email/test", headers=AUTH), 404, "not_found")
    app = standalone_app("memory://", SSE_NOTIFY_SMTP_URL=smtp.url, SSE_NOTIFY_EMAIL_FROM=SENDER)
    client = app.test_client()
    assert_json_error(client.post("/users/alice/channels/email/test", headers=AUTH), 409, "conflict")
    assert (
        client.put("/users/alice/contacts", json={"email": "alice@example.com"}, headers=AUTH).status_code
        == 200
    )
    smtp.refuse.append(550)
    failed = assert_json_error(
        client.post("/users/alice/channels/email/test", headers=AUTH), 502, "channel_failed"
    )
    assert "550" in failed["detail"]
    get_state(app)._test_emails.clear()
    bob = {"Authorization": f"Bearer {token_for('bob')}"}
    assert client.post("/users/alice/channels/email/test", headers=bob).status_code == 403
    own = {"Authorization": f"Bearer {token_for('alice')}"}
    answer = client.post("/users/alice/channels/email/test", headers=own)
    assert (answer.status_code, answer.get_json()) == (200, {"sent": True, "to": "alice@example.com"})
    assert [m.subject for m in smtp.wait(1)] == ["Test email from sse_notify"]


def test_quiet_hours_hold_the_send_until_they_end(tmp_path: Path, smtp: SMTPServer) -> None:
    """A window that falls due in the user's quiet hours keeps its send for their end; critical goes now."""
    from datetime import datetime, timedelta, timezone

    from sse_notify.fallback import SEND

    app = standalone_app(
        f"sqlite:///{tmp_path}/n.sqlite3",
        SSE_NOTIFY_SMTP_URL=smtp.url,
        SSE_NOTIFY_EMAIL_FROM=SENDER,
        SSE_NOTIFY_FALLBACK_AFTER=0.1,
        SSE_NOTIFY_FALLBACK_DIGEST=0.1,
    )
    client = app.test_client()
    state = get_state(app)
    assert (
        client.put("/users/alice/contacts", json={"email": "a@example.com"}, headers=AUTH).status_code == 200
    )
    delivered(client.post("/users/alice/notices", json={"title": "before the hours"}, headers=AUTH))
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    end = now + timedelta(hours=2)
    hours = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": end.strftime("%H:%M"),
        "timezone": "UTC",
    }
    assert (
        client.put("/users/alice/preferences", json={"quiet_hours": hours}, headers=AUTH).status_code == 200
    )
    time.sleep(0.3)
    state.node.due.step()  # the window falls due in the quiet hours
    assert state.broker.scheduled(SEND) == 1
    assert state.broker.claim_due(end.timestamp() - 1, 10, 30) == []
    (send,) = state.broker.claim_due(end.timestamp(), 10, 30)
    assert send.key.startswith("email:")
    assert smtp.mails == []
    delivered(client.post("/users/alice/notices?critical=true", json={"title": "Card expired"}, headers=AUTH))
    time.sleep(0.3)
    state.node.due.step()  # the window of the critical notice: its send is due now
    state.node.due.step()
    (mail,) = smtp.wait(1)
    assert mail.subject == "Card expired"


@pytest.mark.server
def test_two_hosts_on_redis_send_each_fallback_once(
    make_server: t.Callable[..., Server], own_redis: RedisServer, smtp: SMTPServer, webhook: WebhookReceiver
) -> None:
    """Two instances of two workers on one Redis, publishes on both: one email and one call per user."""
    env = {"SSE_NOTIFY_WEBHOOK_URL": webhook.url, "SSE_NOTIFY_WEBHOOK_SECRET": WEBHOOK_SECRET, "workers": 2}
    a = away_server(make_server, smtp, store=own_redis.url, **env)
    b = away_server(make_server, smtp, store=own_redis.url, **env)
    users = [f"user{n}" for n in range(6)]
    with_address(a, *users)
    for n, user in enumerate(users):
        (a if n % 2 else b).publish(user, {"title": f"for {user}"})
    smtp.wait(6)
    webhook.wait(6)
    stays(lambda: len(smtp.mails) == 6 and len(webhook.ids) == 6, 3.0, "nothing sent twice")
    assert sorted(m.recipients[0] for m in smtp.mails) == sorted(f"{u}@example.com" for u in users)
    assert sorted(h.body["data"]["user_id"] for h in webhook.hooks) == users


def test_a_push_payload_stays_under_3_kb_however_long_the_digest() -> None:
    """A digest of 2,000 notices with long titles: at most 3,072 bytes, the newest ids, a count of all."""
    from sse_notify.channels.push import MAX_PAYLOAD, payload
    from sse_notify.fallback import Message

    long = "x" * 5000
    notices = [
        Notice.stored(
            n, "alice", "2027-01-15T08:00:00.000Z", json.dumps({"title": long, "text": long, "url": long})
        )
        for n in range(1, 2001)
    ]
    body = payload(Message("alice", notices, "push:1:alice", 0))
    assert len(body) <= MAX_PAYLOAD
    data = json.loads(body)
    assert data["count"] == 2000
    assert data["id"] == 2000
    assert len(data["title"]) == 200
    assert data["ids"] == list(range(2001 - len(data["ids"]), 2001))


def test_email_over_starttls_with_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """smtp://user:password@host?starttls=true: TLS, then the login, then the mail; a bad login is a 502."""
    cert, context = self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # (the system's trust store, as a private CA would be)
    smtp = SMTPServer(tls=context, login=("ada", "s3cr:et")).start()
    try:
        for password, status in (("wrong", 502), ("s3cr%3Aet", 200)):
            url = f"smtp://ada:{password}@127.0.0.1:{smtp.port}?starttls=true"
            app = standalone_app("memory://", SSE_NOTIFY_SMTP_URL=url, SSE_NOTIFY_EMAIL_FROM=SENDER)
            client = app.test_client()
            client.put("/users/alice/contacts", json={"email": "alice@example.com"}, headers=AUTH)
            answer = client.post("/users/alice/channels/email/test", headers=AUTH)
            assert answer.status_code == status, answer.get_data(as_text=True)
        assert smtp.sessions == [(True, "ada")]
        assert [m.subject for m in smtp.mails] == ["Test email from sse_notify"]
    finally:
        smtp.stop()
