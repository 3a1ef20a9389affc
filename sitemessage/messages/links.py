"""The signed links put into messages: their URLs, reversed once per URLconf rather than per dispatch.

The signatures themselves (per action, and checking them) are :mod:`sitemessage.links`, which the
views use too; this module only builds the URLs of a dispatch's unsubscribe and mark-read links.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Tuple, Union

from django.urls import NoReverseMatch, get_resolver, get_script_prefix, get_urlconf, reverse

from ..links import mark_read_signature, unsubscribe_token
from ..site import get_site_url

if TYPE_CHECKING:  # pragma: nocover
    from ..models import Dispatch, Message

URL_UNSUBSCRIBE = 'sitemessage_unsubscribe'
URL_MARK_READ = 'sitemessage_mark_read'


def signed_link_url(name: str, message_type: str, message_model: 'Message', dispatch_model: 'Dispatch') -> str:
    """Return the absolute signed URL ``name`` (unsubscribe or mark-read) of a saved dispatch.

    '' when the project has not attached sitemessage URLs. ``message_type`` is the alias the
    unsubscribe token names when the message model does not say.
    """
    message_id, dispatch_id = message_model.pk, dispatch_model.pk
    if name == URL_UNSUBSCRIBE:
        signature = unsubscribe_token(
            message_id,
            dispatch_id,
            getattr(message_model, 'cls', None) or message_type,
            dispatch_model.messenger,
            dispatch_model.recipient_id,
            dispatch_model.address,
        )
    else:
        signature = mark_read_signature(message_id, dispatch_id)
    try:
        path = reverse_signed_link(name, message_id, dispatch_id, signature)
    except NoReverseMatch:
        return ''  # the project has not attached sitemessage URLs
    return f'{get_site_url()}{path}'


# Reversing a signed link once per URLconf, not once per dispatch -------------------------------------

_LINK_SAMPLE_ARGS = (987654321987, 123456789123, '0f1e2d3c4b5a69788796a5b4c3d2e1f001234567')
_LINK_TEMPLATES: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
_LINK_TEMPLATES_LOCK = threading.Lock()


def reverse_signed_link(name: str, message_id: int, dispatch_id: int, hashed: str) -> str:
    """``reverse(name, args=[message_id, dispatch_id, hashed])``, from a template made by one reverse().

    Sending thousands of e-mails a second, reverse() per dispatch costs more than building the
    e-mail. The template is kept per URL resolver, which Django replaces whenever the URLconf
    changes (``clear_url_caches()``), so it is never staler than Django's own reverse cache.
    A URL whose pattern does not take the sample values verbatim is reversed every time.
    """
    resolver, key = get_resolver(get_urlconf()), (name, get_script_prefix())
    with _LINK_TEMPLATES_LOCK:  # connection threads build links at once
        parts = _LINK_TEMPLATES.setdefault(resolver, {}).get(key)
    if parts is None:
        parts = _link_template(name)
        with _LINK_TEMPLATES_LOCK:
            _LINK_TEMPLATES[resolver][key] = parts
    if parts is False:
        return reverse(name, args=[message_id, dispatch_id, hashed])
    return f'{parts[0]}{message_id}{parts[1]}{dispatch_id}{parts[2]}{hashed}{parts[3]}'


def _link_template(name: str) -> Union[Tuple[str, str, str, str], bool]:
    sample = reverse(name, args=list(_LINK_SAMPLE_ARGS))  # NoReverseMatch: not cached, raised each time
    parts, rest = [], sample
    for value in _LINK_SAMPLE_ARGS:
        before, found, rest = rest.partition(str(value))
        if not found or str(value) in rest:
            return False
        parts.append(before)
    return (*parts, rest)
