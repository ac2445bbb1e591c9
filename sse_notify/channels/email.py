"""Email through SMTP (the standard library's ``smtplib``), rendered from Jinja templates.

``SSE_NOTIFY_SMTP_URL`` says where: ``smtps://`` is TLS from the start (port 465),
``smtp://`` is port 25 (or the one given) with STARTTLS when the server offers it
(``?starttls=true`` requires it, ``?starttls=false`` never uses it). A login is never sent in
the clear: with a login and no TLS the send fails (permanently) unless the server is on
loopback.

The message has a text and an HTML part and a subject, each a template under
``templates/sse_notify/email/`` that a host app overrides with its own file of the same name.
Its ``Message-ID`` is made from the send's key, so a send repeated after a crash is the same
message to the receiving side.
"""

from __future__ import annotations

import hashlib
import ipaddress
import smtplib
import ssl
import typing as t
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import parse_qs, unquote, urlsplit

from ..fallback import Message, SendFailed

__all__ = ["EmailChannel", "Render"]

#: ``render(template_name, context) -> text``: Flask's ``render_template`` in the app's context.
Render = t.Callable[[str, t.Mapping[str, t.Any]], str]
#: Where a user's address comes from: the host app's hook, then ``PUT /users/<id>/contacts``.
Address = t.Callable[[str], "str | None"]

TEMPLATES = "sse_notify/email/"


class EmailChannel:
    """A digest of a user's unread notices, as one email."""

    name = "email"

    def __init__(self, url: str, sender: str, address: Address, render: Render, timeout: float) -> None:
        parts = urlsplit(url)
        self.implicit_tls = parts.scheme == "smtps"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.login = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        self.starttls = parse_qs(parts.query).get("starttls", ["auto"])[0]
        self.sender = sender
        self.address = address
        self.render = render
        self.timeout = timeout
        self.domain = sender.rpartition("@")[2].rstrip(">") or "localhost"

    def reachable(self, user_id: str) -> bool:
        """Whether the user has an email address."""
        return bool(self.address(user_id))

    def compose(self, message: Message, to: str) -> EmailMessage:
        """The email for ``message``: subject, text and HTML from the templates."""
        notices = [notice.to_dict() for notice in message.notices]
        context = {"user_id": message.user_id, "notices": notices, "count": len(notices)}
        email = EmailMessage()
        subject = " ".join(self.render(TEMPLATES + "subject.txt", context).split())
        email["Subject"] = subject
        email["From"] = self.sender
        email["To"] = to
        email["Date"] = formatdate(localtime=False)
        digest = hashlib.sha256(message.key.encode()).hexdigest()[:32]
        email["Message-ID"] = f"<{digest}.sse-notify@{self.domain}>"
        email["Auto-Submitted"] = "auto-generated"
        email.set_content(self.render(TEMPLATES + "notices.txt", context))
        email.add_alternative(self.render(TEMPLATES + "notices.html", context), subtype="html")
        return email

    def send(self, message: Message) -> None:
        """Send the digest to the user's address."""
        to = self.address(message.user_id)
        if not to:
            raise SendFailed("the user has no email address", permanent=True)
        self.deliver(self.compose(message, to))

    def deliver(self, email: EmailMessage) -> None:
        """Hand ``email`` to the SMTP server.

        :raises SendFailed: permanent when the server refused the sender or every recipient for
            good (a 5xx answer), else to be tried again.
        """
        try:
            with self._connect() as smtp:
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise SendFailed(
                f"SMTP refused the recipient: {exc.recipients}", permanent=min(codes) >= 500
            ) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            raise SendFailed(
                f"SMTP refused the message: {exc.smtp_code} {exc.smtp_error!r}",
                permanent=exc.smtp_code >= 500,
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise SendFailed(f"SMTP refused the login: {exc.smtp_code} {exc.smtp_error!r}") from exc
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timed out, cut
            raise SendFailed(f"SMTP server {self.host}:{self.port}: {exc or type(exc).__name__}") from exc

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                smtp.ehlo()
                if self.starttls == "true" or (self.starttls == "auto" and smtp.has_extn("starttls")):
                    smtp.starttls(context=context)
                    smtp.ehlo()
                elif self.login is not None and not _loopback(self.host):
                    raise SendFailed(
                        f"SMTP server {self.host} offers no STARTTLS: not sending the login in the clear "
                        "(use smtps://, or a server with STARTTLS)",
                        permanent=True,
                    )
            except BaseException:
                smtp.close()
                raise
        if self.login is not None:
            try:
                smtp.login(*self.login)
            except BaseException:
                smtp.close()
                raise
        return smtp


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
