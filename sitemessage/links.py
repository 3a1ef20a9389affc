"""Signed links of dispatches: one signature per action, and what a link that cannot act answers.

* Mark-read links carry ``HMAC-SHA256(SECRET_KEY, "<message id>|<dispatch id>")`` salted for that
  action only (64 hex characters).
* Unsubscribe links carry a signed token (``django.core.signing``, SHA-256, its own salt) naming
  the message, the dispatch, the message type, the messenger and the recipient, so the link still
  unsubscribes after ``cleanup_sent_messages()`` has deleted the dispatch.
* Links sent by 1.4.0 and by 2.0 before per-action signatures carry one signature for both
  actions (``MessageBase.get_dispatch_hash``, HMAC-SHA1). While
  ``SITEMESSAGE_ACCEPT_LEGACY_LINK_SIGNATURES`` is True (the default) both views accept it, as
  those links are in delivered e-mails and cannot tell their action.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Optional

from django.conf import settings
from django.contrib import messages
from django.core import signing
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.utils.crypto import constant_time_compare, salted_hmac
from django.utils.translation import gettext

from .settings import get_setting

ACTION_UNSUBSCRIBE = 'unsubscribe'
ACTION_MARK_READ = 'mark_read'

_SALT_PREFIX = 'sitemessage.links.'
_ALGORITHM = 'sha256'
_LEGACY_HASH = re.compile(r'[0-9a-f]{40}')
_json_string = json.encoder.encode_basestring_ascii  # a str as django.core.signing.JSONSerializer writes it
_MAX_ID = 2**63 - 1  # the largest value a BigAutoField holds: anything above cannot name a row

INVALID_LINK_TEMPLATE = 'sitemessage/link_invalid.html'
STATUS_INVALID = 400  # tampered, malformed or made for another action
STATUS_GONE = 410  # correctly formed but nothing left to act on (dispatch deleted, type retired)


class LinkData(NamedTuple):
    """What a valid unsubscribe token says: enough to unsubscribe without the dispatch row."""

    message_id: int
    dispatch_id: int
    message_type: str
    messenger: str
    recipient_id: Optional[int]
    address: str


def parse_id(value) -> Optional[int]:
    """Return a URL id as an int, or None unless it is ASCII digits within the range of a database id."""
    value = str(value)
    if not (value.isascii() and value.isdigit()) or len(value) > 19:
        return None
    number = int(value)
    return number if number <= _MAX_ID else None


def mark_read_signature(message_id, dispatch_id, secret: Optional[str] = None) -> str:
    """Return the signature of a mark-read link: it cannot unsubscribe.

    ``salted_hmac(salt, "<message id>|<dispatch id>", algorithm='sha256').hexdigest()``, with the
    derived key kept (links are made for thousands of e-mails a second).
    """
    if secret is None:
        mac = _keyed_hmac(f'{_SALT_PREFIX}{ACTION_MARK_READ}', settings.SECRET_KEY).copy()
        mac.update(f'{message_id}|{dispatch_id}'.encode())
        return mac.hexdigest()
    return salted_hmac(
        f'{_SALT_PREFIX}{ACTION_MARK_READ}', f'{message_id}|{dispatch_id}', secret=secret, algorithm=_ALGORITHM
    ).hexdigest()


@lru_cache(maxsize=32)
def _keyed_hmac(key_salt: str, secret) -> hmac.HMAC:
    """An HMAC-SHA256 keyed as ``salted_hmac()`` keys it (``sha256(key_salt + secret)``), to ``copy()``.

    Keying costs more than signing a short value: it is done once per key, not once per link.
    ``hmac.new()``, not the one-shot ``hmac.digest()``: the latter releases the GIL around a
    microsecond of work, and with several connection threads each e-mail then waited to get it back.
    """
    key = hashlib.sha256(
        f'{key_salt}{secret}'.encode() if isinstance(secret, str) else key_salt.encode() + bytes(secret)
    ).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _json_list(values: list) -> str:
    """``json.dumps(values, separators=(',', ':'))`` for a flat list of ints, strings and None, faster."""
    return (
        '['
        + ','.join(
            'null' if value is None else _json_string(value) if isinstance(value, str) else str(int(value))
            for value in values
        )
        + ']'
    )


def is_mark_read_signature_valid(message_id, dispatch_id, signature: str) -> bool:
    """Check a mark-read signature in constant time, against ``SECRET_KEY`` and its fallbacks."""
    return any(
        constant_time_compare(mark_read_signature(message_id, dispatch_id, secret), signature) for secret in _secrets()
    )


def _unsubscribe_signer() -> signing.Signer:
    return signing.Signer(salt=f'{_SALT_PREFIX}{ACTION_UNSUBSCRIBE}', algorithm=_ALGORITHM)


def unsubscribe_token(
    message_id: int, dispatch_id: int, message_type: str, messenger: str, recipient_id: Optional[int], address: str
) -> str:
    """Return the signed token of an unsubscribe link (URL-safe: base64url and ``:``)."""
    # A user is unsubscribed by id, an address by itself: the other is left out to keep links short.
    data = [message_id, dispatch_id, message_type, messenger, recipient_id, '' if recipient_id else address]
    # What ``Signer(salt=..., algorithm='sha256').sign_object(data)`` gives, with the derived key kept.
    value = base64.urlsafe_b64encode(_json_list(data).encode('latin-1')).rstrip(b'=')
    mac = _keyed_hmac(f'{_SALT_PREFIX}{ACTION_UNSUBSCRIBE}signer', settings.SECRET_KEY).copy()
    mac.update(value)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b'=')
    return f'{value.decode()}:{signature.decode()}'


def read_unsubscribe_token(message_id: int, dispatch_id: int, token: str) -> Optional[LinkData]:
    """Return the data of a valid token made for this message and dispatch, else None."""
    if ':' not in token:
        return None
    try:
        data = _unsubscribe_signer().unsign_object(token)
        link = LinkData(*data)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    if (link.message_id, link.dispatch_id) != (message_id, dispatch_id):
        return None
    return link


def is_legacy_signature(signature: str) -> bool:
    """Whether ``signature`` looks like a link of 1.4.0 / early 2.0 (and such links are still accepted)."""
    return bool(get_setting('ACCEPT_LEGACY_LINK_SIGNATURES')) and bool(_LEGACY_HASH.fullmatch(signature))


def _secrets() -> list:
    return [settings.SECRET_KEY, *getattr(settings, 'SECRET_KEY_FALLBACKS', [])]


@lru_cache(maxsize=1)
def _blank_png() -> bytes:
    return (Path(__file__).parent / 'static' / 'img' / 'sitemessage' / 'blank.png').read_bytes()


def invalid_link_response(request: HttpRequest, action: str, status: int = STATUS_INVALID) -> HttpResponse:
    """Say that a link cannot act: a page for unsubscribe links, a blank image for mark-read ones.

    The page is ``sitemessage/link_invalid.html`` (override it in the project's templates). A
    mark-read link sits in an ``<img>``: it answers the transparent pixel with the same status,
    so old e-mails show no broken image.
    """
    if action == ACTION_MARK_READ:
        return HttpResponse(_blank_png(), content_type='image/png', status=status)
    return HttpResponse(render_to_string(INVALID_LINK_TEMPLATE, {'status': status}, request=request), status=status)


UNSUBSCRIBED_TEMPLATE = 'sitemessage/unsubscribe_done.html'
CONFIRMED_FIELD = 'sitemessage_confirmed'  # sent by the confirmation page's form, not by mail clients


def unsubscribed_response(request: HttpRequest, title: str, redirect_to: str) -> HttpResponse:
    """Tell the reader the unsubscribe worked.

    With Django's messages framework active, a success message goes with the redirect to
    ``redirect_to`` (the next page shows it). Without it, a person who confirmed on our page
    gets ``sitemessage/unsubscribe_done.html``. Anything else (a mail client's one-click POST, a
    1.4.0-style GET) is redirected as in 1.4.0.
    """
    text = gettext('You will no longer receive “%(title)s” messages.') % {'title': title}
    if hasattr(request, '_messages'):  # the messages middleware ran for this request
        messages.success(request, text, fail_silently=True)
        return redirect(redirect_to)
    if request.method == 'POST' and request.POST.get(CONFIRMED_FIELD):
        return HttpResponse(
            render_to_string(
                UNSUBSCRIBED_TEMPLATE,
                {'message_type_title': title, 'text': text, 'redirect_to': redirect_to},
                request=request,
            )
        )
    return redirect(redirect_to)
