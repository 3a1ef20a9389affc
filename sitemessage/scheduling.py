"""Scheduling messages: :func:`schedule_messages` (the toolbox re-exports it) and its bulk path.

Many messages at once go in two bulk inserts instead of a few queries per message.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from django.db import connections, router, transaction

from .fallback import on_all_messengers
from .headers import check_message_type_context
from .languages import LanguageResolver, given_language
from .limits import has_limits
from .messages.base import MessageBase
from .messages.plain import PlainTextMessage
from .models import Dispatch, IdempotencyKey, Message, MessageTuple, fail_suppressed_new, log_suppressed_new
from .recipients import is_iterable
from .schedule_options import ScheduleOptions
from .settings import get_setting
from .signals import queue_changed

TypeMessages = Union[str, MessageBase, List[Union[str, MessageBase]]]


def schedule_messages(
    messages: TypeMessages,
    recipients=None,
    sender=None,
    priority: Optional[int] = None,
    *,
    send_at: Optional[datetime] = None,
    expires_at: Optional[datetime] = None,
    idempotency_key: Optional[str] = None,
    language: Optional[str] = None,
) -> List[MessageTuple]:
    """Schedule one or several messages (texts become :class:`PlainTextMessage`) to recipients.

    Without ``recipients`` the dispatches are created later by :func:`prepare_dispatches`.
    Recipients are checked and de-duplicated (see :mod:`sitemessage.headers`): an unsafe address or
    e-mail subject raises :class:`~sitemessage.headers.UnsafeHeaderValueError` before anything is stored.

    ``send_at``: not sent before this time; ``expires_at``: not sent after it (the dispatch fails
    with the reason ``expired``); see docs/send-later.rst. ``idempotency_key``: a repeat of a call
    with this key (within ``SITEMESSAGE_IDEMPOTENCY_RETENTION``) stores nothing and returns what the
    first call stored; see docs/idempotency.rst. A bad option raises
    :class:`~sitemessage.exceptions.SchedulingValueError` naming it. The call is one transaction.

    Each dispatch is rendered in its recipient's language (:mod:`sitemessage.languages`), or in
    ``language`` for all of them; an unknown code raises
    :class:`~sitemessage.languages.UnknownLanguageError` before anything is stored.
    """
    options = ScheduleOptions.checked(send_at, expires_at, idempotency_key)
    with given_language(language):
        return _schedule_messages(messages, recipients, sender, priority, options)


def _schedule_messages(
    messages: TypeMessages, recipients, sender, priority: Optional[int], options: ScheduleOptions
) -> List[MessageTuple]:
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

    database = router.db_for_write(Message)
    # One message with no option is stored in one transaction of its own (Message.create's), as
    # 1.4.0 did: no savepoint, no statement more. Anything else needs the call's own transaction.
    alone = len(prepared) == 1 and not (options.timed or options.idempotency_key)
    with nullcontext() if alone else transaction.atomic(using=database):
        key = options.idempotency_key
        if key is not None:
            earlier = IdempotencyKey.objects.using(database).take(
                key, get_setting('IDEMPOTENCY_RETENTION', check='seconds')
            )
            if earlier is not None:
                return earlier.results()
        results = _schedule_prepared(prepared, recipients, sender, priority, options)
        if key is not None:
            IdempotencyKey.objects.using(database).record(key, [message for message, _dispatches in results])
    return results


def _schedule_prepared(
    prepared: List[MessageBase], recipients, sender, priority: Optional[int], options: ScheduleOptions
) -> List[MessageTuple]:
    bulk = [message for message in prepared if can_bulk_schedule(message)]
    scheduled = {}
    if len(bulk) > 1:
        results = schedule_in_bulk(bulk, recipients, sender=sender, priority=priority, options=options)
        for message, result in zip(bulk, results):
            scheduled[id(message)] = result
    one_by_one = []
    for message in prepared:
        if id(message) not in scheduled:
            scheduled[id(message)] = message.schedule(
                recipients=recipients, sender=sender, priority=priority if priority is not None else message.priority
            )
            one_by_one.append(scheduled[id(message)])
    options.apply(one_by_one)
    return [scheduled[id(message)] for message in prepared]


def can_bulk_schedule(message: MessageBase) -> bool:
    """Grouped messages, digests, throttled types and types with their own ``schedule()`` go one by one."""
    return not message.group_mark and not has_limits(message) and type(message).schedule is MessageBase.schedule


def schedule_in_bulk(
    messages: Sequence[MessageBase],
    recipients,
    sender=None,
    priority: Optional[int] = None,
    *,
    options: Optional[ScheduleOptions] = None,
) -> List[MessageTuple]:
    """Store messages (each with a dispatch per recipient) with one insert per table."""
    items = Dispatch.normalize_recipients(recipients) if recipients is not None else None
    return schedule_pairs_in_bulk(
        [(message, items) for message in messages], sender=sender, priority=priority, options=options
    )


def schedule_pairs_in_bulk(
    pairs: Sequence[Tuple[MessageBase, Optional[list]]],
    sender=None,
    priority: Optional[int] = None,
    *,
    options: Optional[ScheduleOptions] = None,
) -> List[MessageTuple]:
    """Store ``(message, recipients)`` pairs with one insert per table (grouping does not apply).

    ``options`` (``send_at``, ``expires_at``; checked by :meth:`ScheduleOptions.checked`) apply to every pair.
    """
    options = options or ScheduleOptions()
    database = router.db_for_write(Message)
    pairs = [
        (message, Dispatch.normalize_recipients(on_all_messengers_of(message, items)) if items is not None else None)
        for message, items in pairs
    ]
    for message, items in pairs:  # refused before anything is stored
        check_message_type_context(type(message), message.get_context(), items)
    if not connections[database].features.can_return_rows_from_bulk_insert:
        with transaction.atomic(using=database):
            results = [
                message.schedule(
                    recipients=items, sender=sender, priority=priority if priority is not None else message.priority
                )
                for message, items in pairs
            ]
            options.apply(results)
        return results
    models = []
    for message, items in pairs:
        effective = priority if priority is not None else message.priority
        model = Message(
            cls=message.get_alias(),
            context=message.get_context(),
            sender=sender,
            dispatches_ready=items is not None,
            group_mark='',
            **options.message_fields(),
        )
        if effective is not None:
            model.priority = effective
        models.append(model)
    language_of = LanguageResolver()
    languages = [[language_of(r) for r in items or ()] for _message, items in pairs]  # refused before storing
    with transaction.atomic(using=database):
        models = Message.objects.bulk_create(models)
        dispatches = [
            Dispatch.for_recipient(
                r,
                message=model,
                language=language,
                **options.dispatch_fields(),
            )
            for model, (_message, items), item_languages in zip(models, pairs, languages)
            for r, language in zip(items or (), item_languages)
        ]
        suppressed = fail_suppressed_new(dispatches, database)  # never attempted: failed with the reason
        dispatches = Dispatch.objects.bulk_create(dispatches)
        log_suppressed_new(suppressed, database)
        if dispatches:
            queue_changed.send(sender=Dispatch, using=database, inserted=True)
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
