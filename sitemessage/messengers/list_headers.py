"""The list headers of e-mails: ``List-Id`` (RFC 2919), ``List-Unsubscribe`` (RFC 2369) and
``List-Unsubscribe-Post`` (RFC 8058).

One-click unsubscribe is offered only when it is both allowed and meaningful: the URI is https
(RFC 8058 section 3.1), the message type allows subscriptions, and the recipient holds a
subscription to this type and messenger (a dispatch to an explicit recipient has nothing to cancel).
Subscriptions are looked up once for all dispatches of a batch, not once per dispatch, and on the
thread that claimed the batch (:func:`subscriptions_of_batch`, called by ``prepare_batch()``):
connection threads then never query the database, where on SQLite they would wait for the
claiming thread's write lock.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from django.db import connections
from django.db.models import Exists, OuterRef, Q

from ..list_id import check_list_id
from ..models import Dispatch, Subscription

Headers = List[Tuple[str, str]]
_CHUNK = 500  # keeps IN (...) under every database's parameter limit


def subscriptions_of_batch(items: Sequence[tuple]) -> Dict[int, bool]:
    """Whether each dispatch of ``items`` goes to a subscriber: ``{dispatch id: bool}``, in one query.

    Only dispatches of types that allow subscriptions are answered (the others never ask), so a
    messenger keeping the answers until each e-mail is built keeps nothing it will not use.
    """
    wanted = [item for item in items if item[0].allow_user_subscription]
    if not wanted:
        return {}
    subscribed = subscribed_dispatches(wanted)
    return {
        dispatch.pk: dispatch.pk in subscribed
        for _cls, _message, dispatches in wanted
        for dispatch in dispatches
        if dispatch.pk is not None
    }


def list_headers_for(items: Sequence[tuple]) -> Callable[..., Headers]:
    """Return ``headers(message type, message, dispatch, unsubscribe URL, subscribed=None)`` for a batch.

    ``items`` are ``(message type, message, dispatches)``, as ``send_many()`` gets them.
    ``subscribed`` is whether the recipient subscribes, when the caller knows it already
    (:func:`subscriptions_of_batch`); else subscriptions are looked up at the first dispatch that
    needs it, in one query for all ``items``. Nothing is computed before the first call, so a
    faulty ``get_list_id()`` fails each dispatch (with its reason) where the messenger builds it,
    never the batch.
    """
    subscribed: Optional[Set[int]] = None
    list_ids: Dict[type, str] = {}

    def headers(
        message_cls, message_model, dispatch, unsubscribe_url: Optional[str], subscribed_here: Optional[bool] = None
    ) -> Headers:
        nonlocal subscribed
        if message_cls not in list_ids:
            value = message_cls.get_list_id()
            list_ids[message_cls] = check_list_id(str(value), message_cls.get_alias()) if value else ''
        found: Headers = [('List-Id', list_ids[message_cls])] if list_ids[message_cls] else []
        url = unsubscribe_url  # the caller has it already: get_unsubscribe_directive(message_model, dispatch)
        if not url or any(char in url for char in '\r\n<>'):
            return found
        found.append(('List-Unsubscribe', f'<{url}>'))
        if url.startswith('https://') and message_cls.allow_user_subscription:
            if subscribed_here is None:
                if subscribed is None:
                    subscribed = subscribed_dispatches(items)
                subscribed_here = dispatch.pk in subscribed
            if subscribed_here:
                found.append(('List-Unsubscribe-Post', 'List-Unsubscribe=One-Click'))
        return found

    return headers


def subscribed_dispatches(items: Sequence[tuple]) -> Set[int]:
    """Return the ids of the dispatches whose recipient subscribes to their message type over their messenger.

    Dispatches claimed together (one claim token) are matched by the database itself; others by
    lists of their recipients.
    """
    tokens = {dispatch.claim_token for _cls, _message, dispatches in items for dispatch in dispatches}
    if len(tokens) == 1 and next(iter(tokens)):
        first = next(dispatch for _cls, _message, dispatches in items for dispatch in dispatches)
        wanted_ids = {dispatch.pk for _cls, _message, dispatches in items for dispatch in dispatches}
        return claimed_subscribers(tokens.pop(), first._state.db or 'default') & wanted_ids
    wanted = {}  # dispatch id -> (message type, messenger, is a user, user id or address)
    for message_cls, message_model, dispatches in items:
        alias = getattr(message_model, 'cls', None) or message_cls.get_alias()
        for dispatch in dispatches:
            if dispatch.pk is None:
                continue
            user = dispatch.recipient_id is not None
            wanted[dispatch.pk] = (alias, dispatch.messenger, user, dispatch.recipient_id if user else dispatch.address)
    user_ids = sorted({who for _a, _m, user, who in wanted.values() if user}, key=str)
    addresses = sorted({who for _a, _m, user, who in wanted.values() if not user and who})
    types = sorted({alias for alias, _m, _u, _w in wanted.values()})
    found: set = set()
    for start in range(0, max(len(user_ids), len(addresses), 1), _CHUNK):
        condition = Q(recipient_id__in=user_ids[start : start + _CHUNK]) | Q(
            address__in=addresses[start : start + _CHUNK]
        )
        rows = Subscription.objects.filter(condition, message_cls__in=types).values_list(
            'message_cls', 'messenger_cls', 'recipient_id', 'address'
        )
        found.update(
            (alias, messenger, uid is not None, uid if uid is not None else address)
            for alias, messenger, uid, address in rows
        )
    return {pk for pk, key in wanted.items() if key in found}


def claimed_subscribers(claim_token: str, using: str) -> Set[int]:
    """Return the ids of the dispatches claimed with ``claim_token`` whose recipient subscribes.

    One query with no list of recipients to pass: a user's dispatch matches the user's subscription,
    an address' dispatch an address subscription, both to the message's type over the messenger.
    """
    sql, params = _claimed_subscribers_sql(using)
    with connections[using].cursor() as cursor:
        cursor.execute(sql, [claim_token if param == _TOKEN else param for param in params])
        return {row[0] for row in cursor.fetchall()}


_TOKEN = '<claim token>'  # stands for the claim token among the parameters of the compiled query (never a uuid hex)


@lru_cache(maxsize=8)
def _claimed_subscribers_sql(using: str) -> Tuple[str, tuple]:
    """The query of :func:`claimed_subscribers`, compiled once per database: compiling it cost more than running it."""
    same_type = Subscription.objects.filter(message_cls=OuterRef('message__cls'), messenger_cls=OuterRef('messenger'))
    users = Q(Exists(same_type.filter(recipient_id=OuterRef('recipient_id'))), recipient__isnull=False)
    addresses = Q(Exists(same_type.filter(recipient__isnull=True, address=OuterRef('address'))), recipient__isnull=True)
    query = Dispatch.objects.using(using).filter(claim_token=_TOKEN).filter(users | addresses).values_list('pk')
    sql, params = query.query.get_compiler(using).as_sql()
    if sum(param == _TOKEN for param in params) != 1:  # the shortcut needs it as one parameter
        raise RuntimeError('The claim token is not a parameter of the compiled query.')
    return sql, tuple(params)
