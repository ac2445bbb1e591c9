"""The channels a notice falls back to when nobody read it in-app: email, Web Push, a webhook (#15).

Each is a :class:`~sse_notify.fallback.Channel`: it says whether a user can be reached and sends
one message (a digest of the user's unread notices), raising
:class:`~sse_notify.fallback.SendFailed` when it did not go through. When and what to send is
:mod:`sse_notify.fallback`'s; these modules only speak their provider's protocol.
:func:`build` makes the ones the settings turn on.
"""

from __future__ import annotations

import typing as t

from ..errors import InvalidField
from ..fallback import Channel, Fallbacks, Timing
from ..notices import EMAIL_ADDRESS

if t.TYPE_CHECKING:
    from ..brokers.base import Broker
    from ..config import Settings
    from ..delivery import Preferences
    from .email import Render

__all__ = ["CONTACTS", "CONTACT_FIELDS", "ContactsHook", "build", "checked_contacts", "email_address"]

#: The store's record kind for contacts (``PUT /users/<id>/contacts``), one record per field.
CONTACTS = "contacts"

#: What ``PUT /users/<id>/contacts`` may set.
CONTACT_FIELDS = ("email",)

#: ``contacts(user_id) -> {"email": ...} | None``: a host app's own source of addresses.
ContactsHook = t.Callable[[str], "t.Mapping[str, str] | None"]


def checked_contacts(body: object) -> dict[str, str | None]:
    """A contacts body, checked: ``{"email": "ada@example.com"}`` (``null`` or missing: none).

    :raises InvalidField: naming the field that is wrong.
    """
    if not isinstance(body, dict):
        raise InvalidField(
            f'contacts must be a JSON object like {{"email": "ada@example.com"}}, got {type(body).__name__}',
            "contacts",
        )
    unknown = sorted(set(body) - set(CONTACT_FIELDS))
    if unknown:
        raise InvalidField(
            f"contacts: unknown field {unknown[0]!r} (fields: {', '.join(CONTACT_FIELDS)})", unknown[0]
        )
    email = body.get("email")
    if email is not None and (not isinstance(email, str) or not EMAIL_ADDRESS.fullmatch(email)):
        raise InvalidField(f"email: an address like ada@example.com, got {email!r}", "email")
    return {"email": email}


def email_address(broker: Broker, hook: ContactsHook | None, user_id: str) -> str | None:
    """The user's email address: the host app's hook first, then the stored contacts."""
    if hook is not None:
        found = hook(user_id)
        if found is not None:
            return found.get("email") or None
    return broker.user_records(CONTACTS, user_id).get("email")


def build(
    settings: Settings,
    broker: Broker,
    preferences: t.Callable[[str], Preferences],
    render: Render,
    contacts: ContactsHook | None,
    user_agent: str,
    instance_path: str,
) -> Fallbacks | None:
    """The channels the settings turn on, on the store's scheduler; ``None`` if none is."""
    channels: list[Channel] = []
    if settings.smtp_url:
        from .email import EmailChannel

        def address(user_id: str) -> str | None:
            return email_address(broker, contacts, user_id)

        channels.append(
            EmailChannel(settings.smtp_url, settings.email_from, address, render, settings.fallback_timeout)
        )
    if settings.push:
        from .push import PushChannel, vapid_key

        key = vapid_key(settings.vapid_private_key, instance_path)
        subject = settings.vapid_subject or "mailto:sse-notify@localhost"  # (production requires one)
        channels.append(PushChannel(key, subject, settings.push_ttl, settings.fallback_timeout, broker))
    if settings.webhook_url:
        from .webhook import WebhookChannel

        channels.append(
            WebhookChannel(
                settings.webhook_url, settings.webhook_secret, settings.fallback_timeout, user_agent
            )
        )
    if not channels:
        return None
    return Fallbacks(
        broker,
        channels,
        Timing(settings.fallback_after, settings.fallback_digest),
        preferences,
        backoff=settings.fallback_backoff,
        attempts=settings.fallback_attempts,
    )
