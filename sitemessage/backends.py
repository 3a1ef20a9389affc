"""A Django e-mail backend that schedules mail through sitemessage instead of sending it."""
from __future__ import annotations

from typing import Optional, Sequence

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.utils.html import escape, linebreaks

from .settings import get_setting


def body_as_html(message: EmailMessage) -> str:
    """Return the HTML alternative when there is one; else the text body, escaped, with line breaks."""
    for content, mimetype in getattr(message, 'alternatives', None) or ():
        if mimetype == 'text/html':
            return str(content)
    if message.content_subtype == 'html':
        return message.body
    return linebreaks(escape(message.body))


class EmailBackend(BaseEmailBackend):
    """``EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'``: ``send_mail()`` schedules an e-mail.

    Many messages are scheduled in one go (two bulk inserts). The text body is escaped into the
    HTML template (line breaks kept); an ``html_message`` alternative is used as it is.
    """

    def send_messages(self, email_messages: Optional[Sequence[EmailMessage]]) -> int:
        from .messages.email import EmailHtmlMessage
        from .scheduling import schedule_pairs_in_bulk
        from .utils import get_registered_message_type, recipients

        if not email_messages:
            return 0
        forced_type = get_setting('SHORTCUT_EMAIL_MESSAGE_TYPE')
        message_cls = get_registered_message_type(forced_type) if forced_type else EmailHtmlMessage
        messenger = get_setting('SHORTCUT_EMAIL_MESSENGER_TYPE')
        pairs = [(message_cls(message.subject, {'contents': body_as_html(message)}),
                  recipients(messenger, message.recipients()))
                 for message in email_messages if message.recipients()]
        if len(pairs) == 1 or any(message.group_mark for message, _items in pairs):
            for message, items in pairs:
                message.schedule(recipients=items, priority=get_setting('EMAIL_BACKEND_MESSAGES_PRIORITY'))
        else:
            schedule_pairs_in_bulk(pairs, priority=get_setting('EMAIL_BACKEND_MESSAGES_PRIORITY'))
        return len(pairs)
