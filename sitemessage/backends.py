"""A Django e-mail backend that schedules mail through sitemessage instead of sending it."""

from __future__ import annotations

import email.policy
import inspect
from contextlib import contextmanager
from datetime import datetime
from email.generator import BytesGenerator
from email.utils import parseaddr
from io import BytesIO
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import BadHeaderError  # a ValueError (Django 6.1: ValueError itself)
from django.db import DatabaseError
from django.utils.html import escape, linebreaks

from .exceptions import SchedulingValueError
from .headers import (
    UnsafeHeaderValueError,
    check_email_address,
    check_header_name,
    check_header_value,
    is_plain_address,
    is_unsafe,
)
from .messages.email import EmailHtmlMessage, EmailMimeMessage
from .recipients import Recipient, recipients
from .registry import get_registered_message_type, get_registered_messenger_object
from .schedule_options import ScheduleOptions
from .scheduling import schedule_messages, schedule_pairs_in_bulk
from .settings import get_setting


def body_as_html(message: EmailMessage) -> str:
    """Return the HTML alternative when there is one; else the text body, escaped, with line breaks."""
    for content, mimetype in getattr(message, 'alternatives', None) or ():
        if mimetype == 'text/html':
            return str(content)
    if message.content_subtype == 'html':
        return message.body
    return linebreaks(escape(message.body))


def check_email_message(message: EmailMessage) -> None:
    """Refuse what Django's own backends refuse, and NUL and multi-address fields too: ``BadHeaderError``."""
    try:
        check_header_value('Subject', message.subject)
        check_email_address('From', message.from_email)
        for field, name in (('to', 'To'), ('cc', 'Cc'), ('bcc', 'Bcc'), ('reply_to', 'Reply-To')):
            for address in getattr(message, field, None) or ():
                check_email_address(name, address)
        for name, value in (message.extra_headers or {}).items():
            check_header_name(name)
            check_header_value(f'Header {name}', value if isinstance(value, str) else str(value))
    except UnsafeHeaderValueError as error:
        raise BadHeaderError(str(error)) from error


class _Compat32(email.policy.Compat32):
    """compat32 that writes a short one-line ASCII header as it is, skipping ``Header`` folding.

    What compat32 writes for such a header is exactly ``Name: value`` (a test holds both to
    that); the folding machinery is most of the cost of writing an e-mail, and schedulers queue
    thousands at once. Anything else goes through compat32 itself.
    """

    def _fold(self, name, value, sanitize):
        if (
            isinstance(value, str)
            and value.isascii()
            and not is_unsafe(value)
            and len(name) + len(value) + 2 <= self.max_line_length
        ):
            return f'{name}: {value}{self.linesep}'
        return super()._fold(name, value, sanitize)


_COMPAT32 = _Compat32(linesep='\r\n')


def mime_bytes(message: EmailMessage) -> bytes:
    """The e-mail as Django's SMTP backend puts it on the wire (CRLF line ends)."""
    if 'policy' in inspect.signature(message.message).parameters:  # Django 6: modern email API
        return message.message(policy=email.policy.SMTP).as_bytes()
    return flatten(message.message())


def flatten(mime) -> bytes:
    """``mime.as_bytes(linesep='\\r\\n')`` of Django's compat32 MIME classes, byte for byte, faster."""
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=_COMPAT32).flatten(mime, linesep='\r\n')
    return out.getvalue()


def _bare_address_function() -> Callable[[str, str], str]:
    """Django's own envelope address rule: ``prep_address`` on Django 6, ``sanitize_address`` before."""
    from django.core.mail.backends import smtp

    prep_address = getattr(smtp.EmailBackend, 'prep_address', None)
    if prep_address is not None:
        return lambda address, _encoding: prep_address(None, address)  # it does not use the instance
    from django.core.mail.message import sanitize_address

    return lambda address, encoding: parseaddr(sanitize_address(address, encoding))[1]


def unique(addresses: Sequence[str]) -> List[str]:
    """Addresses in order, each once (to, cc and bcc may name the same one)."""
    return list(dict.fromkeys(addresses))


def envelope_of(message: EmailMessage) -> Tuple[str, List[str]]:
    """The envelope Django's SMTP backend would use: sanitized (IDN as punycode), without display names."""
    encoding = message.encoding or settings.DEFAULT_CHARSET
    parse = None

    def bare(address: str) -> str:
        nonlocal parse
        if is_plain_address(address):  # most addresses: the parsing below would give them back as they are
            return address
        parse = parse or _bare_address_function()
        return parse(address, encoding)

    try:
        return bare(message.from_email), unique([bare(address) for address in message.recipients()])
    except ValueError as error:  # e.g. Invalid address; only a@x could be parsed from "a@x, b@y"
        raise BadHeaderError(str(error)) from error


#: Headers carrying scheduling options (when the e-mail has no attribute of the option's name); removed before sending.
OPTION_HEADERS = {
    'send_at': 'X-Sitemessage-Send-At',
    'expires_at': 'X-Sitemessage-Expires-At',
    'idempotency_key': 'X-Sitemessage-Idempotency-Key',
}


def scheduling_options(message: EmailMessage) -> ScheduleOptions:
    """The e-mail's ``send_at``, ``expires_at``, ``idempotency_key``: attributes, else ``X-Sitemessage-*`` headers.

    Header times are ISO 8601 (``2026-12-01T18:00:00+01:00``). A bad value raises
    :class:`~sitemessage.exceptions.SchedulingValueError` naming it.
    """
    headers = {str(name).lower(): value for name, value in (message.extra_headers or {}).items()}
    values: dict = {}
    for option, header in OPTION_HEADERS.items():
        value = getattr(message, option, None)
        raw = headers.get(header.lower())
        if value is None and raw is not None:
            value = str(raw) if option == 'idempotency_key' else parse_header_time(header, raw)
        values[option] = value
    return ScheduleOptions.checked(**values)


def parse_header_time(header: str, value: Any) -> Any:
    """An ISO 8601 time of a header (a datetime passes as it is); an error names the header and the value."""
    if not isinstance(value, str):
        return value
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise SchedulingValueError(f'{header} must be an ISO 8601 time, got {value!r}.') from None


@contextmanager
def option_headers_removed(message: EmailMessage) -> Iterator[None]:
    """Leave the ``X-Sitemessage-*`` option headers out of the e-mail while it is built (the caller's is restored)."""
    original = message.extra_headers
    names = {header.lower() for header in OPTION_HEADERS.values()}
    if original and any(str(name).lower() in names for name in original):
        message.extra_headers = {name: value for name, value in original.items() if str(name).lower() not in names}
    try:
        yield
    finally:
        message.extra_headers = original


class EmailBackend(BaseEmailBackend):
    """``EMAIL_BACKEND = 'sitemessage.backends.EmailBackend'``: ``send_mail()`` queues e-mails.

    Each e-mail is queued as Django built it (``EmailMessage.message()``): attachments, inline
    images, alternatives, Reply-To, Cc and extra headers are delivered as Django's SMTP backend
    would deliver them, in one SMTP transaction for all of to, cc and bcc (each address once).

    ``fail_silently`` covers queueing only: a bad header (``BadHeaderError``) or a database error
    raises unless it is set (then that e-mail is not counted). Delivery happens later; its
    failures are recorded on the dispatch, never raised here. ``send_messages()`` returns the
    number of e-mails queued.

    With ``SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE`` set, or a ``SITEMESSAGE_SHORTCUT_EMAIL_MESSENGER_TYPE``
    that is not an ``SMTPMessenger``, e-mails are scheduled as in 1.4.0 instead: that type with the
    HTML (or escaped text) as ``contents``, one dispatch per recipient.

    Options (keyword arguments, or ``OPTIONS`` of Django 6.1's ``MAILERS``): ``priority`` overrides
    ``SITEMESSAGE_EMAIL_BACKEND_MESSAGES_PRIORITY``.

    An e-mail's attributes ``send_at``, ``expires_at`` and ``idempotency_key`` (or the headers
    ``X-Sitemessage-Send-At``, ``X-Sitemessage-Expires-At``, ``X-Sitemessage-Idempotency-Key``,
    never sent) are its scheduling options (docs/send-later.rst); a repeat of a key counts as queued.
    """

    def __init__(self, fail_silently: bool = False, *, priority: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)  # Django 6.1 passes ``alias`` (MAILERS) and deprecates fail_silently there
        self.fail_silently = fail_silently
        self.priority = priority

    def _priority(self) -> Optional[int]:
        return self.priority if self.priority is not None else get_setting('EMAIL_BACKEND_MESSAGES_PRIORITY')

    def send_messages(self, email_messages: Optional[Sequence[EmailMessage]]) -> int:
        if not email_messages:
            return 0
        forced_type = get_setting('SHORTCUT_EMAIL_MESSAGE_TYPE')
        messenger = get_registered_messenger_object(get_setting('SHORTCUT_EMAIL_MESSENGER_TYPE'))
        if forced_type or not hasattr(messenger, 'send_mime'):
            return self._schedule_legacy(email_messages, forced_type, messenger)
        return self._schedule_mime(email_messages, messenger.get_alias())

    def _build(self, message: EmailMessage):
        """The message type of one e-mail, or None when it has no recipient or is refused silently."""
        if not message.recipients():
            return None
        try:
            options = scheduling_options(message)
            with option_headers_removed(message):
                check_email_message(message)
                sender, recipients = envelope_of(message)
                mime = mime_bytes(message)
        except ValueError:  # BadHeaderError is a ValueError; so are Python's own header refusals
            if self.fail_silently:
                return None
            raise
        return EmailMimeMessage(mime, sender, recipients, subject=str(message.subject)), options

    def _schedule_mime(self, email_messages: Sequence[EmailMessage], messenger: str) -> int:
        pairs = []
        for email_message in email_messages:
            built = self._build(email_message)
            if built is not None:
                message, options = built
                first = message.context['envelope_to'][0][:250]
                pairs.append((message, [Recipient(messenger, None, first)], options))
        return self._store(pairs)

    def _schedule_legacy(self, email_messages: Sequence[EmailMessage], forced_type, messenger) -> int:
        message_cls: Any = get_registered_message_type(forced_type) if forced_type else EmailHtmlMessage
        pairs = []
        for message in email_messages:
            if not message.recipients():
                continue
            try:
                options = scheduling_options(message)
                with option_headers_removed(message):
                    check_email_message(message)
                items = recipients(messenger, message.recipients())
            except ValueError:
                if self.fail_silently:
                    continue
                raise
            pairs.append((message_cls(message.subject, {'contents': body_as_html(message)}), items, options))
        return self._store(pairs)

    def _store(self, pairs: list) -> int:
        """Schedule the pairs; return how many were queued (a failure raises unless fail_silently).

        E-mails with scheduling options go one by one (each has its own); the others in bulk.
        """
        plain = [(message, items) for message, items, options in pairs if options == ScheduleOptions()]
        if len(plain) > 1 and not any(message.group_mark for message, _items in plain):
            try:
                schedule_pairs_in_bulk(plain, priority=self._priority())  # one transaction: all or none
            except (DatabaseError, ValueError):
                if self.fail_silently:
                    return 0
                raise
            queued, pairs = len(plain), [pair for pair in pairs if pair[2] != ScheduleOptions()]
        else:
            queued = 0
        for message, items, options in pairs:
            try:
                schedule_messages(message, items, priority=self._priority(), **options.message_fields())
            except (DatabaseError, ValueError):
                if self.fail_silently:
                    continue
                raise
            queued += 1
        return queued
