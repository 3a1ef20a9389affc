"""One-call scheduling for each built-in messenger."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Optional

from .async_api import async_twin
from .messages.attachments import TypeAttachment
from .messages.email import EmailHtmlMessage, EmailTextMessage
from .settings import get_setting
from .toolbox import TypeMessages, get_registered_message_type, recipients, schedule_messages

__all__ = [
    'schedule_email',
    'schedule_jabber_message',
    'schedule_tweet',
    'schedule_telegram_message',
    'schedule_facebook_message',
    'schedule_vkontakte_message',
    'aschedule_email',
    'aschedule_jabber_message',
    'aschedule_tweet',
    'aschedule_telegram_message',
    'aschedule_facebook_message',
    'aschedule_vkontakte_message',
    'recipients',
    'schedule_messages',
    'get_registered_message_type',
    'EmailHtmlMessage',
    'EmailTextMessage',
    'TypeMessages',
]


def schedule_email(
    message,
    to,
    subject: Optional[str] = None,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
    attachments: Optional[Iterable[TypeAttachment]] = None,
) -> None:
    """Schedule an e-mail: a dict renders the HTML template, anything else is plain text.

    Every shortcut takes the keyword-only ``send_at``, ``expires_at``, ``idempotency_key`` and
    ``language`` of :func:`~sitemessage.toolbox.schedule_messages` (docs/send-later.rst,
    docs/idempotency.rst, docs/languages.rst); each has an async twin (``aschedule_email``...).

    A line break or NUL in ``subject`` or an address, or an address naming several mailboxes,
    raises :class:`~sitemessage.headers.UnsafeHeaderValueError` (nothing is stored); an address
    named several times gets one e-mail. ``attachments`` are stored once for all recipients (see
    :mod:`sitemessage.messages.attachments` for the accepted forms); a bad one raises ``ValueError``.
    """
    forced_type = get_setting('SHORTCUT_EMAIL_MESSAGE_TYPE')
    if forced_type:
        message_cls = get_registered_message_type(forced_type)
    else:
        message_cls = EmailHtmlMessage if isinstance(message, dict) else EmailTextMessage
    to_recipients = recipients(get_setting('SHORTCUT_EMAIL_MESSENGER_TYPE'), to)  # checked before files are stored
    schedule_messages(
        message_cls(subject, message, **({'attachments': attachments} if attachments else {})),
        to_recipients,
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def schedule_jabber_message(
    message: TypeMessages,
    to,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> None:
    """Schedule an XMPP message."""
    schedule_messages(
        message,
        recipients('xmppsleek', to),
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def schedule_tweet(
    message: TypeMessages,
    to='',
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> None:
    """Schedule a post on X/Twitter (``to`` makes it a mention)."""
    schedule_messages(
        message,
        recipients('twitter', to),
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def schedule_telegram_message(
    message: TypeMessages,
    to,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> None:
    """Schedule a Telegram message to a chat id or ``@channel``."""
    schedule_messages(
        message,
        recipients('telegram', to),
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def schedule_facebook_message(
    message: TypeMessages,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> None:
    """Schedule a post on the Facebook page."""
    schedule_messages(
        message,
        recipients('fb', ''),
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def schedule_vkontakte_message(
    message: TypeMessages,
    to,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> None:
    """Schedule a VKontakte wall post (``to`` is the wall owner id; negative for communities)."""
    schedule_messages(
        message,
        recipients('vk', to),
        sender=sender,
        priority=priority,
        **_options(send_at, expires_at, idempotency_key, language),
    )


def _options(
    send_at: Optional[datetime], expires_at: Optional[datetime], idempotency_key: Optional[str], language: Optional[str]
) -> dict:
    return {'send_at': send_at, 'expires_at': expires_at, 'idempotency_key': idempotency_key, 'language': language}


aschedule_email = async_twin(schedule_email)
aschedule_jabber_message = async_twin(schedule_jabber_message)
aschedule_tweet = async_twin(schedule_tweet)
aschedule_telegram_message = async_twin(schedule_telegram_message)
aschedule_facebook_message = async_twin(schedule_facebook_message)
aschedule_vkontakte_message = async_twin(schedule_vkontakte_message)
