"""The list headers of e-mails: ``List-Id`` (RFC 2919), ``List-Unsubscribe`` (RFC 2369) and
``List-Unsubscribe-Post`` (RFC 8058).

One-click unsubscribe is offered only when it is both allowed and meaningful: the URI is https
(RFC 8058 section 3.1), the message type allows subscriptions, and the recipient holds a
subscription to this type and messenger (a dispatch to an explicit recipient has nothing to cancel).
Subscriptions are looked up once for all dispatches of a message, not once per dispatch.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Set, Tuple

from django.db.models import Q

from ..list_id import check_list_id

Headers = List[Tuple[str, str]]
_CHUNK = 500  # keeps IN (...) under every database's parameter limit


def list_headers_for(message_cls, message_model, dispatches: Sequence) -> Callable[[object], Headers]:
    """Return a function giving each dispatch of ``message_model`` its list headers (one query at most).

    Nothing is computed before the first call, so a faulty ``get_list_id()`` fails each dispatch
    (with its reason) where the messenger builds it, never the batch.
    """
    subscribed, list_id = None, None

    def headers(dispatch) -> Headers:
        nonlocal subscribed, list_id
        if list_id is None:
            value = message_cls.get_list_id()
            list_id = check_list_id(str(value), message_cls.get_alias()) if value else ''
        found: Headers = [('List-Id', list_id)] if list_id else []
        url = message_cls.get_unsubscribe_directive(message_model, dispatch)
        if not url or any(char in url for char in '\r\n<>'):
            return found
        found.append(('List-Unsubscribe', f'<{url}>'))
        if url.startswith('https://') and message_cls.allow_user_subscription:
            if subscribed is None:
                subscribed = subscribed_dispatches(message_cls.get_alias(), dispatches)
            if dispatch.pk in subscribed:
                found.append(('List-Unsubscribe-Post', 'List-Unsubscribe=One-Click'))
        return found

    return headers


def subscribed_dispatches(message_type: str, dispatches: Sequence) -> Set[int]:
    """Return the ids of the dispatches whose recipient subscribes to ``message_type`` over its messenger."""
    from ..models import Subscription
    users = {(d.messenger, d.recipient_id) for d in dispatches if d.recipient_id}
    addresses = {(d.messenger, d.address) for d in dispatches if not d.recipient_id and d.address}
    found = set()
    user_ids, plain = sorted({uid for _m, uid in users}), sorted({address for _m, address in addresses})
    for start in range(0, max(len(user_ids), len(plain)), _CHUNK):
        condition = Q(recipient_id__in=user_ids[start:start + _CHUNK]) | Q(address__in=plain[start:start + _CHUNK])
        for messenger, uid, address in Subscription.objects.filter(condition, message_cls=message_type).values_list(
                'messenger_cls', 'recipient_id', 'address'):
            found.add((messenger, uid) if uid else (messenger, address))
    return {d.pk for d in dispatches
            if ((d.messenger, d.recipient_id) if d.recipient_id else (d.messenger, d.address)) in found}
