"""Scheduling messages: :func:`schedule_messages` (the toolbox re-exports it) and its bulk path.

Many messages at once go in two bulk inserts instead of a few queries per message.
"""

from __future__ import annotations

from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from django.db import connections, router, transaction

from .fallback import on_all_messengers
from .headers import check_message_type_context
from .messages.base import MessageBase
from .messages.plain import PlainTextMessage
from .models import Dispatch, Message, MessageTuple
from .recipients import is_iterable
from .signals import queue_changed

TypeMessages = Union[str, MessageBase, List[Union[str, MessageBase]]]


def schedule_messages(
    messages: TypeMessages, recipients=None, sender=None, priority: Optional[int] = None
) -> List[MessageTuple]:
    """Schedule one or several messages (texts become :class:`PlainTextMessage`) to recipients.

    Without ``recipients`` the dispatches are created later by :func:`prepare_dispatches`.
    Recipients are checked and de-duplicated (see :mod:`sitemessage.headers`): an unsafe address or
    e-mail subject raises :class:`~sitemessage.headers.UnsafeHeaderValueError` before anything is stored.
    """
    items: Iterable[Any] = messages if is_iterable(messages) and not isinstance(messages, MessageBase) else (messages,)
    if recipients is not None:
        recipients = Dispatch.normalize_recipients(recipients)  # a generator must serve every message
    prepared = []
    for message in items:
        if isinstance(message, str):
            message = PlainTextMessage(message)
        elif not isinstance(message, MessageBase):
            raise TypeError(f'Expected a message text or a MessageBase instance, got {message!r}.')
        check_message_type_context(type(message), message.get_context(), recipients)  # all before any is stored
        prepared.append(message)

    bulk = [message for message in prepared if can_bulk_schedule(message)]
    scheduled = {}
    if len(bulk) > 1:
        for message, result in zip(bulk, schedule_in_bulk(bulk, recipients, sender=sender, priority=priority)):
            scheduled[id(message)] = result
    for message in prepared:
        if id(message) not in scheduled:
            scheduled[id(message)] = message.schedule(
                recipients=recipients, sender=sender, priority=priority if priority is not None else message.priority
            )
    return [scheduled[id(message)] for message in prepared]


def can_bulk_schedule(message: MessageBase) -> bool:
    """Grouped messages, and types with their own ``schedule()``, go one by one."""
    return not message.group_mark and type(message).schedule is MessageBase.schedule


def schedule_in_bulk(
    messages: Sequence[MessageBase], recipients, sender=None, priority: Optional[int] = None
) -> List[MessageTuple]:
    """Store messages (each with a dispatch per recipient) with one insert per table."""
    items = Dispatch.normalize_recipients(recipients) if recipients is not None else None
    return schedule_pairs_in_bulk([(message, items) for message in messages], sender=sender, priority=priority)


def schedule_pairs_in_bulk(
    pairs: Sequence[Tuple[MessageBase, Optional[list]]], sender=None, priority: Optional[int] = None
) -> List[MessageTuple]:
    """Store ``(message, recipients)`` pairs with one insert per table (grouping does not apply)."""
    database = router.db_for_write(Message)
    pairs = [
        (message, Dispatch.normalize_recipients(on_all_messengers_of(message, items)) if items is not None else None)
        for message, items in pairs
    ]
    for message, items in pairs:  # refused before anything is stored
        check_message_type_context(type(message), message.get_context(), items)
    if not connections[database].features.can_return_rows_from_bulk_insert:
        return [
            message.schedule(
                recipients=items, sender=sender, priority=priority if priority is not None else message.priority
            )
            for message, items in pairs
        ]
    models = []
    for message, items in pairs:
        effective = priority if priority is not None else message.priority
        model = Message(
            cls=message.get_alias(),
            context=message.get_context(),
            sender=sender,
            dispatches_ready=items is not None,
            group_mark='',
        )
        if effective is not None:
            model.priority = effective
        models.append(model)
    with transaction.atomic(using=database):
        models = Message.objects.bulk_create(models)
        dispatches = Dispatch.objects.bulk_create(
            [
                Dispatch(
                    message=model,
                    messenger=r.messenger,
                    recipient=r.user,
                    address='' if r.address is None else r.address,
                )
                for model, (_message, items) in zip(models, pairs)
                for r in items or ()
            ]
        )
        if dispatches:
            queue_changed.send(sender=Dispatch, using=database)
    result, offset = [], 0
    for model, (message, items) in zip(models, pairs):
        own = dispatches[offset : offset + len(items or ())]
        offset += len(own)
        message._message_model, message._dispatch_models = model, own
        result.append(MessageTuple(model, own))
    return result


def on_all_messengers_of(message: MessageBase, items):
    """A critical type's recipients (``send_on_all_messengers``): each user on every one of its messengers."""
    return on_all_messengers(type(message), items) if message.send_on_all_messengers else items
