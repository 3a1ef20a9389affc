"""Delivery to users' inboxes, for the inbox tests (their fixtures are in tests/inbox_fixtures.py)."""

from __future__ import annotations

from sitemessage.messages.plain import PlainTextMessage
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages


def deliver(text: str, *users) -> None:
    """Schedule ``text`` to the users' inboxes and send it."""
    schedule_messages(PlainTextMessage(text), recipients('inbox', list(users)))
    send_scheduled_messages()
