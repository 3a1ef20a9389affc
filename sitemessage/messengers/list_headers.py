"""The list headers of e-mails: ``List-Id`` (RFC 2919), ``List-Unsubscribe`` (RFC 2369) and
``List-Unsubscribe-Post`` (RFC 8058).

One-click unsubscribe is offered only when it is both allowed and meaningful: the URI is https
(RFC 8058 section 3.1), the message type allows subscriptions, and the recipient holds a
subscription to this type and messenger (a dispatch to an explicit recipient has nothing to cancel).
Whether the recipient subscribes is found by the engine, for a whole batch at once, on the thread
that claimed it (``Dispatch.recipient_subscribes``): this module never queries the database.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from django.utils.translation import get_language

from ..list_id import check_list_id

Headers = List[Tuple[str, str]]


def list_headers_for(items: Sequence[tuple]) -> Callable[..., Headers]:
    """Return ``headers(message type, message, dispatch, unsubscribe URL)`` for the e-mails of a batch.

    ``items`` are ``(message type, message, dispatches)``, as ``send_many()`` gets them. Nothing is
    computed before the first call, so a faulty ``get_list_id()`` fails each dispatch (with its
    reason) where the messenger builds it, never the batch.
    """
    list_ids: Dict[Tuple[type, Optional[str]], str] = {}

    def headers(message_cls, message_model, dispatch, unsubscribe_url: Optional[str]) -> Headers:
        key = (message_cls, get_language())  # the title is in the dispatch's language
        if key not in list_ids:
            value = message_cls.get_list_id()
            list_ids[key] = check_list_id(str(value), message_cls.get_alias()) if value else ''
        found: Headers = [('List-Id', list_ids[key])] if list_ids[key] else []
        url = unsubscribe_url  # the caller has it already: get_unsubscribe_directive(message_model, dispatch)
        if not url or any(char in url for char in '\r\n<>'):
            return found
        found.append(('List-Unsubscribe', f'<{url}>'))
        # None (not known: a lookup failed) offers no one-click: it could unsubscribe nothing.
        if url.startswith('https://') and message_cls.allow_user_subscription and dispatch.recipient_subscribes:
            found.append(('List-Unsubscribe-Post', 'List-Unsubscribe=One-Click'))
        return found

    return headers
