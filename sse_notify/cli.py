"""Commands on the app's CLI: ``flask --app wsgi notify USER JSON``, ``broadcast JSON``, ``token USER``."""

from __future__ import annotations

import json
import typing as t

import click
from flask import Flask
from flask.cli import with_appcontext

from .auth import MAX_TOKEN_TTL
from .errors import SSENotifyError
from .service import get_state

__all__ = ["register_commands"]


def _parse_object(text: str) -> dict[str, t.Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from exc
    if not isinstance(value, dict):
        raise click.BadParameter('must be a JSON object, e.g. \'{"text": "hi"}\'', param_hint="DATA")
    return value


def _publish(user_id: str | None, data: str) -> None:
    try:
        (notice,) = get_state().publish_many([(user_id, _parse_object(data))])
    except SSENotifyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(notice.to_json())


@click.command("notify")
@click.argument("user_id")
@click.argument("data")
@with_appcontext
def notify_command(user_id: str, data: str) -> None:
    """Send a notice (DATA: a JSON object) to USER_ID; prints the stored notice."""
    _publish(user_id, data)


@click.command("broadcast")
@click.argument("data")
@with_appcontext
def broadcast_command(data: str) -> None:
    """Send a notice (DATA: a JSON object) to every user; prints the stored notice."""
    _publish(None, data)


@click.command("token")
@click.argument("user_id")
@click.option(
    "--ttl",
    type=click.IntRange(min=1, max=MAX_TOKEN_TTL),
    default=None,
    help=f"Lifetime in seconds, at most {MAX_TOKEN_TTL} (30 days) [default: SSE_NOTIFY_TOKEN_TTL].",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="A topic the stream may follow (repeat for several; match-* for a prefix).",
)
@with_appcontext
def token_command(user_id: str, ttl: int | None, topics: tuple[str, ...]) -> None:
    """Print a connection token that opens USER_ID's stream."""
    try:
        click.echo(get_state().issue_token(user_id, ttl, topics))
    except SSENotifyError as exc:
        raise click.ClickException(str(exc)) from exc


def register_commands(app: Flask) -> None:
    """Add the commands to ``app.cli``."""
    app.cli.add_command(notify_command)
    app.cli.add_command(broadcast_command)
    app.cli.add_command(token_command)
