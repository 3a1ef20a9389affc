"""Digest windows: a recipient's messages of a type collected for a while, then sent as one.

A message type declares ``digest_window = timedelta(minutes=10)`` (or seconds). The first message
to a recipient opens a window; later ones join it; when it closes, one dispatch goes out, rendered
from every joined context (the template variable ``digest`` holds them, in order). Windows are
always per recipient and type; ``get_digest_key()`` may split them further (e.g. per thread).

:func:`schedule_with_limits` is what ``MessageBase.schedule()`` does for a type with a digest
window or a throttle (:mod:`sitemessage.throttles`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, List, Optional

from django.db import transaction

from .headers import check_message_type_context
from .limits import digest_window_of, throttle_of
from .recipients import Recipient
from .throttles import split_by_throttle, throttled_reason

if TYPE_CHECKING:  # pragma: nocover
    from .messages.base import MessageBase
    from .models import MessageTuple

#: The template variable (and context key) holding the list of joined contexts.
DIGEST_VARIABLE = 'digest'

_TEMPLATE_KEYS = ('tpl', 'use_tpl')
_KEY_LENGTH = 250  # Message.digest_key


def digest_item(context: dict) -> dict:
    """What one message adds to the ``digest`` list: its context without the template bookkeeping."""
    return {key: value for key, value in context.items() if key not in _TEMPLATE_KEYS and key != DIGEST_VARIABLE}


def add_to_digest(digest: Optional[dict], context: dict, text_key: str) -> dict:
    """A digest's context with a message's appended (``digest`` None: the first message opens it).

    The first message's keys stay at the top (a subject, a template); plain texts are joined with
    a newline, as grouping joins them.
    """
    if digest is None:
        return {**context, DIGEST_VARIABLE: [digest_item(context)]}
    merged = {**digest, DIGEST_VARIABLE: [*digest.get(DIGEST_VARIABLE, []), digest_item(context)]}
    if text_key in digest and text_key in context:
        merged[text_key] = f'{digest[text_key]}\n{context[text_key]}'
    return merged


def digest_key(message: 'MessageBase', recipient: Recipient, context: dict) -> str:
    """The stored key of a recipient's window: messenger, address and the type's own key (hashed if long)."""
    own = message.get_digest_key(recipient, context)
    if not isinstance(own, (str, int)) or isinstance(own, bool):
        raise TypeError(
            f'get_digest_key() of message type `{message.get_alias()}` must return a str, got {own!r} '
            f'({type(own).__name__}).'
        )
    key = f'{recipient.messenger}|{recipient.address or ""}|{own}'
    if len(key) > _KEY_LENGTH:
        key = 'sha256:' + hashlib.sha256(key.encode('utf-8')).hexdigest()
    return key


def schedule_with_limits(
    message: 'MessageBase', recipients=None, sender=None, priority: Optional[int] = None
) -> 'MessageTuple':
    """Schedule a message of a type with a digest window and/or a throttle.

    Without recipients, the type's subscribers are taken now (a window is per recipient). Under a
    throttle, recipients under the limit get the message at once; the others get a failed dispatch
    with the reason, or, with a digest window too, the message joins their digest. With a digest
    window alone, every recipient's copy joins their digest. Returns the first message stored
    (a digest, or the message sent at once) with every dispatch created or joined.
    """
    from .models import Dispatch, Message, MessageTuple

    window = digest_window_of(message)
    throttle = throttle_of(message)
    alias, context = message.get_alias(), message.get_context()
    items = Dispatch.normalize_recipients(recipients if recipients is not None else message.get_subscribers())
    check_message_type_context(type(message), context, items)
    if priority is None:
        priority = message.priority

    # Counted before the transaction opens: on SQLite a transaction must write before it reads.
    now_items: List[Recipient] = list(items)
    folded: List[Recipient] = []  # join their digest
    throttled: List[Recipient] = []  # recorded as not sent
    reason = ''
    if throttle is not None:
        now_items, over = split_by_throttle(alias, items, *throttle)
        folded, throttled = (over, []) if window is not None else ([], over)
        reason = throttled_reason(alias, *throttle)
    elif window is not None:
        now_items, folded = [], list(items)

    models: List[Any] = []
    dispatches: List[Any] = []
    with transaction.atomic(using=Message.objects.db):
        if now_items or throttled or not folded:
            model, sent_now = Message.create(
                alias,
                context,
                recipients=now_items,
                sender=sender,
                priority=priority,
                group_mark=message.group_mark,
                context_merge_hook=message.merge_context,
            )
            models.append(model)
            dispatches.extend(sent_now)
            if throttled:
                dispatches.extend(Dispatch.objects.create_throttled(model, throttled, reason))
        for recipient in folded if window is not None else ():
            digest, dispatch = Message.objects.join_digest(
                alias,
                digest_key(message, recipient, context),
                recipient,
                context,
                window,
                type(message).merge_digest,
                sender=sender,
                priority=priority,
            )
            models.append(digest)
            dispatches.append(dispatch)
    message._message_model, message._dispatch_models = models[0], dispatches
    return MessageTuple(models[0], dispatches)
