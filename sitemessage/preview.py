"""A message rendered as each of its messengers would send it, for the admin's preview page.

Rendering goes through the message type's own ``compile()``; a failure (a missing template, an
unregistered messenger) is shown in place of that messenger's text rather than raised.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

from django.db.models import Count

from .exceptions import SiteMessageError
from .models import Dispatch, Message
from .plaintext import html_to_text
from .registry import get_registered_messenger_object, get_registered_messenger_objects


class Preview(NamedTuple):
    messenger: str
    title: str
    subject: Optional[str]
    text: str  # the compiled text, or the reason it could not be compiled
    is_html: bool
    text_part: Optional[str]  # what the SMTP messenger sends as the text/plain part of HTML
    error: bool
    dispatches: int


def messengers_of(message: Message) -> List[str]:
    """The messengers of the message's dispatches; without any, those its type supports."""
    used = list(message.dispatch_set.order_by('messenger').values_list('messenger', flat=True).distinct())
    if used:
        return used
    try:
        supported = list(message.get_type().supported_messengers or ())
    except SiteMessageError:
        supported = []
    return supported or sorted(get_registered_messenger_objects())


def render_previews(message: Message) -> List[Preview]:
    """Compile ``message`` for each of its messengers.

    A stand-in for the first dispatch of each messenger (its address and recipient, no primary
    key) is passed to templates, so unsubscribe and mark-read links come out empty: the preview
    never shows a working link that would act for a recipient.
    """
    counts = _counts(message)
    previews = []
    for alias in messengers_of(message):
        first = message.dispatch_set.filter(messenger=alias).order_by('pk').first()
        stand_in = Dispatch(
            message=message,
            messenger=alias,
            address=first.address if first else '',
            recipient_id=first.recipient_id if first else None,
        )
        subject = message.context.get('subject') if isinstance(message.context.get('subject'), str) else None
        is_html = message.context.get('type') == 'html'
        title, error = alias, False
        try:
            messenger = get_registered_messenger_object(alias)
            title = str(messenger.title)
            # A rendered template is a SafeString: make it plain text, so nothing outputs it unescaped.
            text = str.__str__(message.get_type().compile(message, messenger, dispatch=stand_in))
        except Exception as exc:  # shown to staff instead of a server error
            text, error, is_html = f'{type(exc).__name__}: {exc}', True, False
        previews.append(
            Preview(
                alias,
                title,
                subject,
                text,
                is_html,
                html_to_text(text) if is_html else None,
                error,
                counts.get(alias, 0),
            )
        )
    return previews


def _counts(message: Message) -> dict:
    rows = message.dispatch_set.order_by().values('messenger').annotate(n=Count('pk'))
    return {row['messenger']: row['n'] for row in rows}
