"""Real servers that fallback channels send to: SMTP (aiosmtpd) and a webhook receiver.

Each runs in this test process on a free loopback port, records what it received, and can be
stopped and started again on the same port (a provider that is down, then back).
"""

from __future__ import annotations

import email
import email.policy
import http.server
import ipaddress
import json
import ssl
import threading
import typing as t
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from typing_extensions import Self

from .support import free_port, wait_for

#: The webhook secret of the tests' servers and receivers.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Mail:
    """One email as the SMTP server received it."""

    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        """The Subject header."""
        return str(self.message["Subject"])

    def part(self, subtype: str) -> str:
        """The ``text/<subtype>`` part's text."""
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part in {self.message}"
        return t.cast(str, body.get_content())


class _Handler:
    def __init__(self, inbox: list[Mail], refuse: list[int], sessions: list[tuple[bool, str | None]]) -> None:
        self.inbox = inbox
        self.refuse = refuse
        self.sessions = sessions

    async def handle_DATA(self, server: t.Any, session: t.Any, envelope: t.Any) -> str:
        if self.refuse:
            return f"{self.refuse.pop(0)} refused by the test"
        self.sessions.append((session.ssl is not None, session.auth_data))
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.inbox.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), t.cast(EmailMessage, message)))
        return "250 OK"


@dataclass
class SMTPServer:
    """aiosmtpd on loopback: ``mails`` holds what it accepted."""

    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    #: SMTP codes to answer the next DATA commands with (then 250 again).
    refuse: list[int] = field(default_factory=list)
    #: With a TLS context: STARTTLS is offered and required before anything else.
    tls: ssl.SSLContext | None = None
    #: With a login: AUTH (after STARTTLS) is required, and only this one passes.
    login: tuple[str, str] | None = None
    #: Each session's (TLS on, the login it passed) when it sent a mail.
    sessions: list[tuple[bool, str | None]] = field(default_factory=list)
    _controller: Controller | None = None

    @property
    def url(self) -> str:
        """``SSE_NOTIFY_SMTP_URL`` for it (no TLS on loopback)."""
        return f"smtp://127.0.0.1:{self.port}?starttls=false"

    def start(self) -> SMTPServer:
        """Listen (again) on :attr:`port`."""
        options: dict[str, t.Any] = {}
        if self.tls is not None:
            options.update(tls_context=self.tls, require_starttls=True)
        if self.login is not None:
            options.update(authenticator=self._authenticate, auth_required=True, auth_require_tls=True)
        handler = _Handler(self.mails, self.refuse, self.sessions)
        self._controller = Controller(handler, hostname="127.0.0.1", port=self.port, **options)
        self._controller.start()
        return self

    def _authenticate(
        self, server: t.Any, session: t.Any, envelope: t.Any, mechanism: str, data: t.Any
    ) -> t.Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        if isinstance(data, LoginPassword) and (data.login.decode(), data.password.decode()) == self.login:
            return AuthResult(success=True, auth_data=data.login.decode())
        return AuthResult(success=False, handled=False)

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait(self, count: int, timeout: float = 20) -> list[Mail]:
        """The first ``count`` mails, once that many arrived."""
        wait_for(lambda: len(self.mails) >= count, timeout, f"{count} email(s) (got {len(self.mails)})")
        return self.mails[:count]

    def to(self, address: str) -> list[Mail]:
        """The mails sent to ``address``."""
        return [mail for mail in self.mails if address in mail.recipients]


@dataclass
class Hook:
    """One webhook call as received, after its signature was verified."""

    headers: dict[str, str]
    body: dict[str, t.Any]


class PostReceiver:
    """An HTTP server on loopback, in a thread, whose POSTs :meth:`answer` handles."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: http.server.ThreadingHTTPServer | None = None

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers, body)`` for a POST (header names in lower case)."""
        raise NotImplementedError

    def start(self) -> Self:
        """Listen (again) on :attr:`port`."""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, extra, answer = owner.answer(self.path, headers, body)
                self.send_response(status)
                for name, value in {**extra, "Content-Length": str(len(answer))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: t.Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class WebhookReceiver(PostReceiver):
    """A webhook receiver that checks each POST with the ``standardwebhooks`` reference verifier.

    ``answers`` lists the status codes of the next calls (then 204). A call whose signature
    does not verify is answered 400 and kept in :attr:`refused`.
    """

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret
        self.hooks: list[Hook] = []
        self.refused: list[str] = []
        self.answers: list[int] = []
        #: The ``webhook-id`` of every call, answered 2xx or not.
        self.ids: list[str] = []

    @property
    def url(self) -> str:
        """Where to POST."""
        return f"http://127.0.0.1:{self.port}/hooks/sse-notify"

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Verify the signature, then answer the next of :attr:`answers` (204 when none is left)."""
        self.ids.append(headers.get("webhook-id", ""))
        try:
            Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            self.refused.append(str(exc))
            return 400, {}, b""
        status = self.answers.pop(0) if self.answers else 204
        if status < 300:
            self.hooks.append(Hook(headers, json.loads(body)))
        return status, {}, b""

    def wait(self, count: int, timeout: float = 20) -> list[Hook]:
        """The first ``count`` accepted calls, once that many arrived."""
        what = f"{count} webhook call(s) (got {len(self.hooks)})"
        wait_for(lambda: len(self.hooks) >= count, timeout, what)
        return self.hooks[:count]


def self_signed(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 (its file, for SSL_CERT_FILE) and a server context with it."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context
