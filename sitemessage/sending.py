"""The delivery loop: claim a bounded batch, hand it to messengers, repeat until the queue is done.

Memory stays flat whatever the queue size (one batch at a time); each batch costs a handful
of queries (claim, outcomes, error log), never one per dispatch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Set

from django.utils import timezone

from .exceptions import UnknownMessageTypeError, UnknownMessengerError
from .models import Dispatch, Message
from .settings import get_positive_int_setting
from .utils import get_registered_message_type, get_registered_messenger_object

LOGGER = logging.getLogger(__name__)


@dataclass
class SendReport:
    """What one run of :func:`send_scheduled_messages` did."""

    sent: int = 0
    errors: int = 0
    failed: int = 0
    released: int = 0
    batches: int = 0
    seconds: float = 0.0
    skipped_messengers: Set[str] = field(default_factory=set)
    skipped_message_types: Set[str] = field(default_factory=set)

    def count(self, dispatches: List[Dispatch]) -> None:
        for dispatch in dispatches:
            status = dispatch.dispatch_status
            if status == Dispatch.DISPATCH_STATUS_SENT:
                self.sent += 1
            elif status == Dispatch.DISPATCH_STATUS_ERROR:
                self.errors += 1
            elif status == Dispatch.DISPATCH_STATUS_FAILED:
                self.failed += 1
            else:
                self.released += 1

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


def send_scheduled_messages(priority=None, ignore_unknown_messengers: bool = False,
                            ignore_unknown_message_types: bool = False,
                            should_stop: Optional[Callable[[], bool]] = None) -> SendReport:
    """Send every dispatch that is due, batch by batch, oldest first.

    Dispatches attempted in this run are not taken again in the same run, so a failing one is
    retried on a later run (after its backoff). An unknown messenger or message type raises
    (unless ignored) after the current batch is stored; its dispatches stay in the queue.
    ``should_stop`` is asked between batches (a worker's stop request).
    """
    priority = validate_priority(priority)
    batch_size = get_positive_int_setting('SEND_BATCH_SIZE')
    lease_seconds = get_positive_int_setting('SEND_LEASE_SECONDS')
    report = SendReport()
    started = time.monotonic()
    run_started_at = timezone.now()
    try:
        while not (should_stop and should_stop()):
            batch = Dispatch.objects.claim(
                batch_size, lease_seconds, priority=priority, attempted_before=run_started_at,
                exclude_messengers=report.skipped_messengers, exclude_types=report.skipped_message_types)
            if not batch:
                break
            report.batches += 1
            error = deliver_batch(batch, report, ignore_unknown_messengers, ignore_unknown_message_types)
            report.count(batch)
            if error is not None:
                raise error
    finally:
        report.seconds = time.monotonic() - started
    return report


def deliver_batch(batch: List[Dispatch], report: SendReport, ignore_unknown_messengers: bool,
                  ignore_unknown_message_types: bool):
    """Deliver one claimed batch; return the first unknown-alias error not to be ignored."""
    first_error = None
    for alias, messages in Dispatch.group_by_messengers(batch).items():
        try:
            messenger = get_registered_messenger_object(alias)
        except UnknownMessengerError as error:
            Dispatch.objects.release([d for _message, group in messages.values() for d in group])
            report.skipped_messengers.add(alias)
            first_error = first_error or (None if ignore_unknown_messengers else error)
            continue
        try:
            messenger.process_messages(messages, ignore_unknown_message_types=ignore_unknown_message_types)
        except UnknownMessageTypeError as error:
            first_error = first_error or error
        report.skipped_message_types.update(_unknown_types(messages))
        for message, _group in messages.values():
            if message.cls in report.skipped_message_types:
                LOGGER.warning('Message %s of unknown type `%s` left in the queue.', message.pk, message.cls)
    return first_error


def _unknown_types(messages) -> Set[str]:
    unknown = set()
    for message, _group in messages.values():
        try:
            get_registered_message_type(message.cls)
        except UnknownMessageTypeError:
            unknown.add(message.cls)
    return unknown


def prepare_dispatches() -> List[Dispatch]:
    """Create dispatches for messages scheduled without recipients, from current subscribers."""
    dispatches = []
    for message in Message.get_without_dispatches().iterator():
        message_cls = get_registered_message_type(message.cls)
        dispatches.extend(message_cls.prepare_dispatches(message))
    return dispatches
