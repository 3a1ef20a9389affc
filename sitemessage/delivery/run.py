"""The delivery loop: claim a bounded batch, hand it to messengers, repeat until the queue is done.

Memory stays flat whatever the queue size (one batch at a time); each batch costs a handful
of queries (claim, outcomes, error log), never one per dispatch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

from django.utils import timezone

from ..exceptions import UnknownMessageTypeError, UnknownMessengerError
from ..messengers.base import MessengerBase
from ..models import Dispatch, Message, PreparedDispatches
from ..registry import get_registered_message_type, get_registered_messenger_object
from ..settings import get_positive_int_setting
from .outcomes import WARM_UP_FAILURE
from .session import DeliverySession

LOGGER = logging.getLogger(__name__)


@dataclass
class SendReport:
    """What one run of :func:`send_scheduled_messages` did.

    ``unreachable_messengers`` names the messengers that could not connect (warm-up failed)
    for any dispatch they were given in this run, with the first reason: the run could not
    deliver through them at all (the commands exit with status 3).
    """

    sent: int = 0
    errors: int = 0
    failed: int = 0
    released: int = 0
    batches: int = 0
    seconds: float = 0.0
    skipped_messengers: Set[str] = field(default_factory=set)
    skipped_message_types: Set[str] = field(default_factory=set)
    attempts: 'Counter[str]' = field(default_factory=Counter, repr=False)  # messenger alias -> dispatches attempted
    warm_up_failures: 'Counter[str]' = field(default_factory=Counter, repr=False)  # alias -> dispatches not connected
    warm_up_reasons: Dict[str, str] = field(default_factory=dict, repr=False)  # alias -> first warm-up error

    def count(self, dispatches: List[Dispatch]) -> None:
        for dispatch in dispatches:
            status = dispatch.dispatch_status
            if status == Dispatch.DISPATCH_STATUS_SENT:
                self.sent += 1
            elif status == Dispatch.DISPATCH_STATUS_ERROR:
                self.errors += 1
                log = str(dispatch.error_log or '')
                if log.startswith(WARM_UP_FAILURE):
                    self.warm_up_failures[dispatch.messenger] += 1
                    self.warm_up_reasons.setdefault(dispatch.messenger, log)
            elif status == Dispatch.DISPATCH_STATUS_FAILED:
                self.failed += 1
            else:
                self.released += 1
                continue
            self.attempts[dispatch.messenger] += 1

    @property
    def unreachable_messengers(self) -> Dict[str, str]:
        """Messengers whose every attempt in this run failed to connect, each with its first reason."""
        return {
            alias: reason
            for alias, reason in self.warm_up_reasons.items()
            if self.warm_up_failures[alias] == self.attempts[alias]
        }

    def merge(self, other: 'SendReport') -> None:
        """Add another run's report to this one (a worker's totals)."""
        for name in ('sent', 'errors', 'failed', 'released', 'batches', 'seconds'):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.skipped_messengers |= other.skipped_messengers
        self.skipped_message_types |= other.skipped_message_types
        self.attempts.update(other.attempts)
        self.warm_up_failures.update(other.warm_up_failures)
        for alias, reason in other.warm_up_reasons.items():
            self.warm_up_reasons.setdefault(alias, reason)

    def __str__(self):
        return f'Sent: {self.sent}, errors: {self.errors}, failed: {self.failed}, seconds: {self.seconds:.2f}'


def validate_priority(priority) -> Optional[int]:
    """Return ``priority`` as an int (``'10'`` works, as in 1.4.0); a bad value is named in the error."""
    if priority is None:
        return None
    try:
        value = int(priority)
    except (TypeError, ValueError):
        raise ValueError(f'Priority must be a whole number, got {priority!r}.') from None
    if value < 0:
        raise ValueError(f'Priority must not be negative, got {priority!r}.')
    return value


def send_scheduled_messages(
    priority=None,
    ignore_unknown_messengers: bool = False,
    ignore_unknown_message_types: bool = False,
    should_stop: Optional[Callable[[], bool]] = None,
    progress: Optional[Callable[[SendReport], None]] = None,
) -> SendReport:
    """Send every dispatch that is due, batch by batch, oldest first.

    Each messenger's connections stay open for the whole run. With several connections the
    next batch is claimed while the connections still deliver the current one, so they never
    sit idle between batches. Dispatches attempted in this run are not taken again in the
    same run, so a failing one is retried on a later run (after its backoff). An unknown
    messenger or message type raises (unless ignored) after the current batch is stored; its
    dispatches stay in the queue. ``should_stop`` is asked between batches (a worker's stop
    request). ``progress`` is called with the report so far after each batch is stored.
    """
    priority = validate_priority(priority)
    batch_size = get_positive_int_setting('SEND_BATCH_SIZE')
    lease_seconds = get_positive_int_setting('SEND_LEASE_SECONDS')
    report = SendReport()
    started = time.monotonic()
    run_started_at = timezone.now()

    def claim() -> List[Dispatch]:
        if should_stop and should_stop():
            return []
        return Dispatch.objects.claim(
            batch_size,
            lease_seconds,
            priority=priority,
            attempted_before=run_started_at,
            exclude_messengers=report.skipped_messengers,
            exclude_types=report.skipped_message_types,
        )

    try:
        with DeliveryRun(report, ignore_unknown_messengers, ignore_unknown_message_types) as run:
            # The run closes its sessions on the way out, storing whatever was handed over.
            batch = claim()
            delivery = run.start(batch) if batch else None
            while delivery is not None:
                report.batches += 1
                next_batch, next_delivery = [], None
                overlap = delivery.error is None and delivery.threaded
                if overlap:
                    # Hand over the next batch while the connections still have this one's last
                    # units, so they never wait for the database between batches.
                    run.wait_until_drained()
                    next_batch = claim()
                    next_delivery = run.start(next_batch) if next_batch else None
                error = run.finish(delivery)
                report.count(batch)
                if progress is not None:
                    progress(report)
                if error is not None:
                    raise error
                # One connection on this thread: claim only once it is done. Claimed early and found
                # nothing: look again, storing this batch may have queued more (fallback dispatches).
                if not overlap or not next_batch:
                    next_batch = claim()
                    next_delivery = run.start(next_batch) if next_batch else None
                batch, delivery = next_batch, next_delivery
    finally:
        report.seconds = time.monotonic() - started
    return report


def deliver_batch(
    batch: List[Dispatch], report: SendReport, ignore_unknown_messengers: bool, ignore_unknown_message_types: bool
):
    """Deliver one claimed batch and store its outcomes; return the first unknown-alias error not ignored."""
    with DeliveryRun(report, ignore_unknown_messengers, ignore_unknown_message_types) as run:
        return run.finish(run.start(batch))


class _Delivery:
    """A batch handed to the messengers: their shares, and the first error to raise once it is stored."""

    def __init__(self):
        self.shares: list = []  # (session, SubmittedBatch)
        self.error: Optional[Exception] = None

    @property
    def threaded(self) -> bool:
        """Whether connection threads deliver some of it (the caller may claim the next batch meanwhile)."""
        return any(session.threaded for session, _share in self.shares)


class DeliveryRun:
    """The messengers' delivery sessions of one run, opened as each messenger is first needed."""

    def __init__(self, report: SendReport, ignore_unknown_messengers: bool, ignore_unknown_message_types: bool):
        self.report = report
        self.ignore_unknown_messengers = ignore_unknown_messengers
        self.ignore_unknown_message_types = ignore_unknown_message_types
        self._sessions: Dict[str, DeliverySession] = {}
        self._stack = ExitStack()

    def __enter__(self) -> 'DeliveryRun':
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()  # stores whatever is still open, then disconnects

    def start(self, batch: List[Dispatch]) -> _Delivery:
        """Hand a claimed batch to its messengers: connection threads start on it, the rest waits for finish()."""
        delivery = _Delivery()
        for alias, messages in Dispatch.group_by_messengers(batch).items():
            try:
                messenger = get_registered_messenger_object(alias)
            except UnknownMessengerError as error:
                Dispatch.objects.release([d for _message, group in messages.values() for d in group])
                self.report.skipped_messengers.add(alias)
                delivery.error = delivery.error or (None if self.ignore_unknown_messengers else error)
                continue
            if not has_own_loop(messenger):
                session = self._session(alias, messenger)
                share = session.submit(messages, self.ignore_unknown_message_types)
                delivery.shares.append((session, share))
                unknown, type_error = share.unknown_types, share.error
            else:  # a project's own loop: synchronous
                unknown, type_error = _unknown_types(messages)
                self._process_overridden(messenger, messages)
            self.report.skipped_message_types.update(unknown)  # before the next claim
            if not self.ignore_unknown_message_types:
                delivery.error = delivery.error or type_error
            for message, _group in messages.values():
                if message.cls in unknown:
                    LOGGER.warning('Message %s of unknown type `%s` left in the queue.', message.pk, message.cls)
        return delivery

    def wait_until_drained(self) -> None:
        for session in self._sessions.values():
            session.wait_until_drained()

    def finish(self, delivery: _Delivery) -> Optional[Exception]:
        """Wait for every share of the batch and store it; return the first error to raise."""
        for session, share in delivery.shares:
            try:
                session.finish(share)
            except UnknownMessageTypeError:
                pass  # already in delivery.error
        return delivery.error

    def _session(self, alias: str, messenger) -> DeliverySession:
        session = self._sessions.get(alias)
        if session is None:
            session = self._sessions[alias] = self._stack.enter_context(DeliverySession(messenger))
        return session

    def _process_overridden(self, messenger, messages) -> None:
        try:
            messenger.process_messages(messages, ignore_unknown_message_types=self.ignore_unknown_message_types)
        except UnknownMessageTypeError:
            pass  # already recorded by start()


def has_own_loop(messenger: MessengerBase) -> bool:
    """Whether a project's messenger overrides ``process_messages()`` (1.4.0's entry point).

    Such a messenger delivers each batch its own way, synchronously; every other messenger is
    driven by a :class:`~sitemessage.delivery.session.DeliverySession`.
    """
    return type(messenger).process_messages is not MessengerBase.process_messages


def _unknown_types(messages) -> Tuple[Set[str], Optional[UnknownMessageTypeError]]:
    """Return the unregistered message types among ``messages`` and the error naming the first.

    For messengers that override ``process_messages()``; a delivery session finds them itself.
    """
    unknown, first_error = set(), None
    for message, _group in messages.values():
        try:
            get_registered_message_type(message.cls)
        except UnknownMessageTypeError as error:
            unknown.add(message.cls)
            first_error = first_error or error
    return unknown, first_error


def prepare_dispatches(ignore_unknown_message_types: bool = False) -> PreparedDispatches:
    """Create dispatches for messages scheduled without recipients, from current subscribers.

    Each message is claimed first, so two workers running this at once never prepare one twice;
    its dispatches are written in chunks, and a preparation cut short is resumed by the next call
    (see :class:`~sitemessage.models.MessageQuerySet`). Returns the dispatches created, as a
    :class:`~sitemessage.models.PreparedDispatches` (read back from the database when used).

    A message of an unregistered type raises ``UnknownMessageTypeError``, or, with
    ``ignore_unknown_message_types``, is logged and left waiting while the others are prepared.
    """
    prepared = PreparedDispatches()
    lease_seconds = get_positive_int_setting('SEND_LEASE_SECONDS')
    for message_id in list(Message.get_without_dispatches().order_by('pk').values_list('pk', flat=True)):
        message = Message.objects.filter(pk=message_id, dispatches_ready=False).first()
        if message is None:
            continue  # prepared meanwhile by another worker
        try:
            message_cls = get_registered_message_type(message.cls)
        except UnknownMessageTypeError:
            if not ignore_unknown_message_types:
                raise
            LOGGER.warning(
                'Message %s of unknown type `%s` left waiting for prepare_dispatches().', message.pk, message.cls
            )
            continue
        if not Message.objects.claim_preparation(message, lease_seconds):
            continue  # another worker is preparing it
        try:
            prepared.add(message_cls.prepare_dispatches(message))
        finally:
            Message.objects.release_preparation(message)
    return prepared


def count_waiting_for_preparation() -> int:
    """Messages scheduled without recipients that still wait for :func:`prepare_dispatches` (one COUNT query).

    After ``prepare_dispatches()`` the ones left have no subscribers yet.
    """
    return Message.get_without_dispatches().count()
