"""Handing claimed work to a messenger's public hooks, and making sure every dispatch comes back with an outcome.

A messenger only sees :meth:`~sitemessage.messengers.base.MessengerBase.send_many` (or ``send``)
and marks outcomes; compiling texts, rate limits, guarding against a hook that raises or forgets a
dispatch, and storing the outcomes are the engine's, here.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Tuple

from .. import metrics
from ..dbretry import retry_on_connection_loss
from ..exceptions import MessengerException
from ..languages import rendering_language
from ..models import Dispatch, Message, context_problem, has_text
from . import ratelimit
from .fallback import create_fallback_dispatches
from .outcomes import MessageWork
from .suppression import handle_permanent_failures

if TYPE_CHECKING:  # pragma: nocover
    from ..messengers.base import MessengerBase

LOGGER = logging.getLogger(__name__)

Limits = Tuple[Optional[float], Optional[float]]  # (messages a second, per recipient); None is no limit

_LOCKS: 'weakref.WeakKeyDictionary[MessengerBase, threading.RLock]' = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def messenger_lock(messenger: 'MessengerBase') -> threading.RLock:
    """The lock of a messenger instance: one delivery at a time keeps its connection state consistent.

    Registered instances are shared by every thread of a process; subclasses need not call any
    ``__init__`` for this.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(messenger)
        if lock is None:
            lock = _LOCKS[messenger] = threading.RLock()
    return lock


def compile_texts(
    messenger: 'MessengerBase', message_cls, message: Message, dispatches: List[Dispatch]
) -> List[Dispatch]:
    """Fill ``message_cache`` where empty, in each dispatch's language; return the dispatches that compiled.

    A message whose stored context cannot be read fails all its dispatches here, with the
    reason: retrying cannot make the row readable.
    """
    problem = context_problem(message)
    if problem is not None:
        LOGGER.error('%s', problem)
        for dispatch in dispatches:
            messenger.mark_failed(dispatch, problem)
        return []
    failed = set()
    for language, group in by_language(dispatch for dispatch in dispatches if not has_text(dispatch)).items():
        try:
            with rendering_language(language):  # one rendering per language, not per recipient
                texts = message_cls.compile_for_dispatches(message, messenger, group)
        except Exception as error:
            for dispatch in group:
                messenger.mark_error(dispatch, error, message_cls)
                failed.add(id(dispatch))
            continue
        for dispatch, text in zip(group, texts):
            dispatch.message_cache = text
    return [dispatch for dispatch in dispatches if id(dispatch) not in failed]


def by_language(dispatches: Iterable[Dispatch]) -> 'dict[Optional[str], List[Dispatch]]':
    """Group dispatches by the language they are rendered in (``None``: from before 2.0), keeping their order."""
    groups: 'dict[Optional[str], List[Dispatch]]' = {}
    for dispatch in dispatches:
        groups.setdefault(dispatch.language, []).append(dispatch)
    return groups


def deliver(messenger: 'MessengerBase', work: List[MessageWork], limits: Limits) -> None:
    """Deliver several messages: in one ``send_many()`` call, or one dispatch at a time under a rate limit."""
    if limits != (None, None):
        for item in work:
            deliver_rate_limited(messenger, item, limits)
        return
    try:
        messenger.send_many(work)
    except Exception as error:
        LOGGER.exception('%s: send_many() raised', messenger.get_alias())
        for item in work:
            mark_unmarked(messenger, item.dispatches, error, item.message_cls)
    else:
        for item in work:
            mark_unmarked(
                messenger,
                item.dispatches,
                MessengerException(
                    f'{type(messenger).__name__}.send_many() did not report an outcome for this dispatch'
                ),
                item.message_cls,
            )


def deliver_rate_limited(messenger: 'MessengerBase', item: MessageWork, limits: Limits) -> None:
    """Send one dispatch at a time, each after taking a slot of the messenger's quotas."""
    limit, per_recipient = limits
    alias = messenger.get_alias()
    for index, dispatch in enumerate(item.dispatches):
        try:
            if limit is not None:
                ratelimit.acquire(alias, limit)
            if per_recipient is not None:
                ratelimit.acquire(f'{alias}:{dispatch.address}', per_recipient)
        except TimeoutError as error:
            # The quota is exhausted for now: the rest waits for a later run, no attempt counted.
            LOGGER.warning('%s: %s', alias, error)
            for waiting in item.dispatches[index:]:
                messenger.mark_pending(waiting)
            return
        send_guarded(messenger, item.message_cls, item.message, [dispatch])


def send_guarded(messenger: 'MessengerBase', message_cls, message: Message, dispatches: List[Dispatch]) -> None:
    """``messenger.send()``; a dispatch it raised on or left unmarked is recorded as an error, with why."""
    try:
        messenger.send(message_cls, message, dispatches)
    except Exception as error:
        LOGGER.exception('%s: send() raised', messenger.get_alias())
        mark_unmarked(messenger, dispatches, error, message_cls)
    else:
        mark_unmarked(
            messenger,
            dispatches,
            MessengerException(f'{type(messenger).__name__}.send() did not report an outcome for this dispatch'),
            message_cls,
        )


def mark_unmarked(messenger: 'MessengerBase', dispatches: Iterable[Dispatch], error: Any, message_cls=None) -> None:
    """Mark every dispatch the messenger left without an outcome as an error (retried later)."""
    for dispatch in dispatches:
        if not dispatch.has_outcome:
            messenger.mark_error(dispatch, error, message_cls)


def store_outcomes(dispatches: List[Dispatch], untouched: List[Dispatch]) -> None:
    """Write the outcomes of ``dispatches`` in bulk; give ``untouched`` (never attempted) back to the queue."""
    untouched_ids = {id(dispatch) for dispatch in untouched}
    attempted = [dispatch for dispatch in dispatches if id(dispatch) not in untouched_ids]
    for dispatch in attempted:
        if not dispatch.has_outcome:
            # Reached only when something raised mid-way: still record why it was not sent.
            dispatch.set_outcome(Dispatch.DISPATCH_STATUS_ERROR, 'Delivery was interrupted before an outcome')
    # What was handed to a server must not be sent again because the database was away for a
    # moment: storing is retried on a fresh connection (with the claim tokens it started with).
    claims = [(dispatch, dispatch.claim_token, dispatch.lease_until) for dispatch in attempted]

    def restore_claims():
        for dispatch, token, lease_until in claims:
            dispatch.claim_token, dispatch.lease_until = token, lease_until

    retry_on_connection_loss(
        lambda: Dispatch.objects.store_outcomes(attempted), 'storing delivery outcomes', before_retry=restore_claims
    )
    metrics.observe_outcomes(attempted)
    handle_permanent_failures(attempted)
    try:
        retry_on_connection_loss(lambda: create_fallback_dispatches(attempted), 'creating fallback dispatches')
    except Exception:  # the outcomes are stored: the failures stay recorded, with their reasons
        LOGGER.exception('Could not create the fallback dispatches of a batch')
    retry_on_connection_loss(lambda: Dispatch.objects.release(untouched), 'releasing dispatches')
