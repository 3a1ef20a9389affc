"""What an e-mail may put on the wire: the last gate before SMTP, whatever the queue holds.

Scheduling validates input, but rows already queued (by 1.4.0, by raw inserts) reach the
messenger unchecked. Here a header value with CR, LF or NUL (which would end the header, or the
header block, and inject lines), or an address field naming more than one address, makes that
one dispatch fail. Addresses are also put in their wire form: an international domain name
(IDN) as punycode, as Django's mail does, but by IDNA 2008 with UTS 46 mapping (the ``idna``
package, as browsers and registries do) where Django uses the stdlib's IDNA 2003 codec, which
maps ``faß.de`` to another domain (``fass.de``). A non-ASCII local part needs the server's
SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

from email.charset import Charset
from email.utils import getaddresses, parseaddr
from typing import Optional

import idna

from ..headers import is_addr_spec

_UTF8 = Charset('utf-8')


def header_problem(field: str, value: Optional[str]) -> str:
    """Why ``value`` cannot be written in a header (it holds CR, LF or NUL), or ''."""
    if value is None:
        return ''
    text = value if type(value) is str else str(value)
    if '\n' in text or '\r' in text or '\0' in text:  # not any(): this runs once per e-mail
        return f'{field} {text!r} contains a CR, LF or NUL character: refused, it would inject header lines'
    return ''


def one_address_problem(field: str, value: str, *, require_domain: bool = True) -> str:
    """Why ``value`` is not exactly one e-mail address (``a@x, b@y`` names two), or ''.

    ``require_domain=False`` accepts a bare local name (``postmaster``), which a test message
    may be sent to, as in 1.4.0.
    """
    problem = header_problem(field, value)
    if problem:
        return problem
    found = getaddresses([value])
    if len(found) != 1:
        return f'{field} {value!r} names {len(found)} addresses; one is allowed'
    address = found[0][1]
    if not is_addr_spec(address):
        return f'{field} {value!r} is not a valid address (parsed as {address!r})'
    if require_domain and '@' not in address:
        return f'{field} {value!r} has no @domain'
    return ''


def ascii_domain(address: str) -> str:
    """``address`` with its domain as IDNA punycode (``bücher.example`` -> ``xn--bcher-kva.example``).

    Raises ``idna.IDNAError`` (a ``UnicodeError``) for a domain that IDNA 2008 (UTS 46) refuses.
    """
    local, at, domain = address.rpartition('@')
    if not at or domain.isascii():
        return address
    return f'{local}@{idna.encode(domain, uts46=True).decode("ascii")}'


def envelope_address(to: str) -> str:
    """The address of a ``To`` value as MAIL FROM / RCPT TO take it: bare, IDN domain in punycode."""
    return ascii_domain(parseaddr(to)[1] if '<' in to else to)


def header_address(to: str) -> str:
    """The ``To``/``From`` value: a non-ASCII display name RFC 2047-encoded, the domain in punycode.

    A display name with characters special in addresses (``.``, ``,``, ``@``...) is quoted, so a
    reader parses exactly the one address meant.

    A non-ASCII local part stays UTF-8: only an SMTPUTF8 transaction may carry it (RFC 6532).
    """
    if to.isascii() and '<' not in to:
        return to  # a bare address, the common case
    name, address = parseaddr(to)
    address = ascii_domain(address)
    if not name:
        return address
    if name.isascii():
        return f'{quote_name(name)} <{address}>'
    return f'{_UTF8.header_encode(name)} <{address}>'  # one encoded word, as formataddr() writes it


def quote_name(name: str) -> str:
    """A display name as a quoted string when it holds characters special in addresses (RFC 5322)."""
    if any(char in name for char in '()<>[]:;@\\,."'):
        escaped = name.replace('\\', '\\\\').replace('"', '\\"')
        return f'"{escaped}"'
    return name


def needs_smtputf8(*addresses: str) -> bool:
    """Whether these envelope addresses (domains already punycode) need an SMTPUTF8 transaction."""
    return not all(address.isascii() for address in addresses)
