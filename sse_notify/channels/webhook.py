"""A webhook: the notices POSTed as JSON to ``SSE_NOTIFY_WEBHOOK_URL``, signed the Standard Webhooks way.

The scheme (https://www.standardwebhooks.com): headers ``webhook-id`` (the same for every try of a
message, so a receiver drops a repeat), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of ``<id>.<timestamp>.<body>`` under
the secret's bytes, from ``whsec_<base64>``). The signing is these few lines of ``hmac`` rather
than the ``standardwebhooks`` package, which would add four dependencies to the server; the
tests check every signature with that package's verifier.

A 2xx answer is success. ``410 Gone`` gives up; any other answer, a timeout or a refused
connection is tried again with backoff (:mod:`sse_notify.fallback`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime, timezone

import httpx
import orjson

from ..fallback import Message, SendFailed
from ..notices import utc_iso

__all__ = ["EVENT_TYPE", "WebhookChannel", "sign"]

#: The ``type`` of the body.
EVENT_TYPE = "notices.unread"


def sign(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body``."""
    signed = b"%b.%d.%b" % (msg_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


class WebhookChannel:
    """One POST per message to the host's URL."""

    name = "webhook"

    def __init__(self, url: str, secret: str, timeout: float, user_agent: str) -> None:
        self.url = url
        self.secret = base64.b64decode(secret.removeprefix("whsec_"))
        self.timeout = timeout
        self.user_agent = user_agent
        self._client: httpx.Client | None = None

    def reachable(self, user_id: str) -> bool:
        """Every user: the webhook is the host's."""
        return True

    def body(self, message: Message) -> bytes:
        """``{"type": "notices.unread", "timestamp": ..., "data": {"user_id", "count", "notices"}}``."""
        return orjson.dumps(
            {
                "type": EVENT_TYPE,
                "timestamp": utc_iso(datetime.now(timezone.utc)),
                "data": {
                    "user_id": message.user_id,
                    "count": len(message.notices),
                    "notices": [notice.fields() for notice in message.notices],
                },
            }
        )

    def send(self, message: Message) -> None:
        """POST the message, signed."""
        body = self.body(message)
        msg_id = "msg_" + hashlib.sha256(message.key.encode()).hexdigest()[:24]
        now = int(time.time())
        headers: dict[str, str] = {
            "content-type": "application/json",
            "user-agent": self.user_agent,
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(self.secret, msg_id, now, body),
        }
        try:
            answer = self.client().post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise SendFailed(f"webhook {self.url}: {exc or type(exc).__name__}") from exc
        if answer.is_success:
            return
        raise SendFailed(
            f"webhook {self.url} answered {answer.status_code}", permanent=answer.status_code == 410
        )

    def client(self) -> httpx.Client:
        """One client per process (its connections are kept)."""
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        return self._client

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            self._client.close()
            self._client = None
