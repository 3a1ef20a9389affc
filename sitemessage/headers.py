"""Header safety at the door: values that would become e-mail headers are checked when scheduled.

A CR or LF in a subject, a name or an address becomes a header line (or the start of the body)
on the wire; so do the other line separators Python's email package splits header values at
(VT, FF, NEL, U+2028...); a NUL is refused by many servers and truncates text in others. Such values are
refused when a message is scheduled, with :class:`UnsafeHeaderValueError` naming the field and
the value, so nothing of the kind is ever stored, let alone sent. An e-mail address field holds
exactly one address (``'victim@x, evil@attacker.test'`` is refused). The checks are a
precompiled regular expression on the common path: scheduling thousands of messages stays cheap.
"""

from __future__ import annotations

import logging
import re
from email.utils import getaddresses
from typing import Any, Iterable, List, Optional

from .exceptions import SiteMessageError
from .registry import get_registered_message_types, get_registered_messenger_objects

LOGGER = logging.getLogger(__name__)

# CR, LF and NUL, and what Python's email package also splits header lines at (str.splitlines()):
# VT, FF, FS, GS, RS, NEL, LINE and PARAGRAPH SEPARATOR.
_UNSAFE = re.compile('[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]')
_PLAIN_ADDRESS = re.compile(r'[^@\s<>"(),;:\\\[\]\x00]+@[^@\s<>"(),;:\\\[\]\x00]+\Z')  # one bare address
_HEADER_NAME = re.compile(r'[!-9;-~]+\Z')  # RFC 5322 field name: printable ASCII but ':'

# Context keys the SMTP messenger writes into headers.
HEADER_CONTEXT_KEYS = ('subject',)


_LINE_BREAK = 'contains a line break (CR, LF or another line separator) or NUL'


class UnsafeHeaderValueError(SiteMessageError, ValueError):
    """A value meant for an e-mail header (or an address) holds a line break or NUL, or several addresses."""

    def __init__(self, field: str, value: Any, reason: str = _LINE_BREAK):
        self.field, self.value = field, value
        super().__init__(f'{field} {reason}: {value!r}')


def is_unsafe(value: str) -> bool:
    """Whether ``value`` holds a line break or NUL."""
    return _UNSAFE.search(value) is not None


def check_header_value(field: str, value: Any) -> None:
    """Refuse a header value (subject, display name...) holding a line break or NUL."""
    if isinstance(value, str) and _UNSAFE.search(value):
        raise UnsafeHeaderValueError(field, value)


def check_header_name(name: Any) -> None:
    """Refuse a header name that is not printable ASCII without ``:`` (RFC 5322 section 2.2)."""
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise UnsafeHeaderValueError('Header name', name, 'is not a valid header field name')


def check_address(field: str, value: Any) -> None:
    """Refuse an address holding a line break or NUL (any messenger: chat ids, JIDs...)."""
    if isinstance(value, str) and _UNSAFE.search(value):
        raise UnsafeHeaderValueError(field, value)


def check_email_address(field: str, value: Any) -> None:
    """Refuse an e-mail address with a line break or NUL, or naming more than one mailbox.

    ``Name <user@host>`` and quoted local parts are fine; an empty address is left to the
    messenger (the dispatch fails with its reason, as for a user without an e-mail).
    """
    if not isinstance(value, str) or not value or _PLAIN_ADDRESS.match(value):
        return
    if _UNSAFE.search(value):
        raise UnsafeHeaderValueError(field, value)
    pairs = [pair for pair in getaddresses([value]) if pair != ('', '')]
    # 'a@x, b@y', 'Name <a@x> junk', 'x <<@y>': several mailboxes; 'a@x b@y': an '@' the parse lost.
    # Nothing parsed from a non-empty value (Python 3.13's strict parser, 'a <b@x>; c@y'): refused too.
    if not pairs or len(pairs) > 1 or (pairs and value.count('@') > pairs[0][0].count('@') + pairs[0][1].count('@')):
        raise UnsafeHeaderValueError(field, value, 'must hold exactly one address')
    if not is_addr_spec(pairs[0][1]):
        raise UnsafeHeaderValueError(field, value, 'is not a valid address')


_NOT_IN_ADDRESSES = frozenset('<>,;"')  # outside a quoted local part


def is_addr_spec(address: str) -> bool:
    """Whether a parsed address can go to an envelope and a header as it is.

    An unbalanced quote in a display name leaves all of it to the address (``"0 <,@x>`` parses
    as ``0 <,@x>``): spaces and brackets in the envelope, and a header readers split in two. A
    quoted local part (``"odd local"@example.com``) may hold them.
    """
    local, _at, domain = address.rpartition('@')
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = 'x'  # quoted: anything goes inside (the parser has matched its quotes)
    return bool(address) and not any(char.isspace() or char in _NOT_IN_ADDRESSES for char in f'{local}@{domain}')


def is_plain_address(value: str) -> bool:
    """A bare ASCII ``user@host``: its own envelope address, nothing to parse or encode."""
    return value.isascii() and _PLAIN_ADDRESS.match(value) is not None


def check_context(context: Any, email: bool) -> None:
    """Check the context values the SMTP messenger writes into headers (``subject``)."""
    if not email or not isinstance(context, dict):
        return
    for key in HEADER_CONTEXT_KEYS:
        check_header_value(key.capitalize(), context.get(key))


def check_recipients(items: Iterable) -> None:
    """Check recipients' addresses: e-mail ones fully, those of other messengers for CR/LF/NUL."""
    email_aliases: dict = {}
    for item in items:
        address = item.address
        if not isinstance(address, str) or not address:
            continue
        email = email_aliases.get(item.messenger)
        if email is None:
            email = email_aliases[item.messenger] = is_email_messenger(item.messenger)
        if email:
            check_email_address('Address', address)
        else:
            check_address(f'Address (messenger `{item.messenger}`)', address)


def safe_recipients(items: List) -> List:
    """The recipients that pass :func:`check_recipients`; the others are logged and left out.

    For recipients read from the database (subscribers): one bad stored address must not stop
    a message from reaching everybody else.
    """
    safe = []
    for item in items:
        try:
            check_recipients((item,))
        except UnsafeHeaderValueError as error:
            LOGGER.warning('Recipient left out: %s', error)
            continue
        safe.append(item)
    return safe


def unique_recipients(items: List) -> List:
    """Keep the first of recipients naming the same (messenger, address), or the same user without one.

    An empty address without a user (a Facebook or VK page wall, a tweet) is not a duplicate.
    """
    seen: set = set()
    unique = []
    key: tuple
    for index, item in enumerate(items):
        if item.address:
            key = (item.messenger, item.address)
        else:
            key = (item.messenger, '', ('row', index) if item.user is None else ('user', item.user.pk))
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique if len(unique) != len(items) else items


def check_message_type_context(message_type: Any, context: Any, items: Optional[Iterable] = None) -> None:
    """Check the header values in the context of an e-mail: a type for ``smtp``, or one sent to e-mail addresses."""
    if not isinstance(context, dict) or not any(key in context for key in HEADER_CONTEXT_KEYS):
        return
    if isinstance(message_type, str):
        message_type = get_registered_message_types().get(message_type)
    email = 'smtp' in (getattr(message_type, 'supported_messengers', None) or ()) or any(
        is_email_messenger(alias) for alias in {item.messenger for item in items or ()}
    )
    check_context(context, email=email)


def is_email_messenger(alias: str) -> bool:
    """Whether addresses of this messenger are e-mail addresses (SMTP or ``address_attr = 'email'``)."""
    if alias == 'smtp':
        return True
    messenger = get_registered_messenger_objects().get(alias)
    return messenger is not None and getattr(messenger, 'address_attr', None) == 'email'
