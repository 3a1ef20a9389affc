"""What the delivery queue looks like now: for ``sitemessage_status`` and the Prometheus gauges.

Four aggregate queries (GROUP BY messenger), whatever the queue size: never one per row, and
sent dispatches are never counted (they are the bulk of the table and say nothing about the queue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Dict, List, Optional

from django.db.models import Case, Count, F, Min, Q, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import Dispatch, DispatchError, Message

# Stable names of the statuses counted (the labels of the admin are translated).
QUEUE_STATUSES = {
    Dispatch.DISPATCH_STATUS_PENDING: 'pending',
    Dispatch.DISPATCH_STATUS_PROCESSING: 'processing',
    Dispatch.DISPATCH_STATUS_ERROR: 'error',
    Dispatch.DISPATCH_STATUS_FAILED: 'failed',
}
# Dispatches still to be delivered: pending, claimed by a run, or in error waiting for a retry.
WAITING = ('pending', 'processing', 'error')
RECENT = timedelta(hours=1)


@dataclass
class MessengerStatus:
    """The queue of one messenger (or the totals of all): counts, and ages in seconds."""

    pending: int = 0
    processing: int = 0
    error: int = 0
    failed: int = 0
    due: int = 0
    oldest_due_age: Optional[float] = None
    errors_last_hour: int = 0
    failed_last_hour: int = 0

    @property
    def waiting(self) -> int:
        """Dispatches not delivered yet and not given up on: pending, processing and error."""
        return sum(getattr(self, name) for name in WAITING)

    def as_dict(self) -> dict:
        return {
            'pending': self.pending,
            'processing': self.processing,
            'error': self.error,
            'failed': self.failed,
            'waiting': self.waiting,
            'due': self.due,
            'oldest_due_age_seconds': self.oldest_due_age,
            'errors_last_hour': self.errors_last_hour,
            'failed_last_hour': self.failed_last_hour,
        }


@dataclass
class QueueStatus:
    """The queue at ``checked_at``: per messenger, totals, and messages waiting for preparation."""

    checked_at: datetime
    messengers: Dict[str, MessengerStatus] = field(default_factory=dict)
    awaiting_preparation: int = 0

    @property
    def totals(self) -> MessengerStatus:
        total = MessengerStatus()
        for status in self.messengers.values():
            for name in ('pending', 'processing', 'error', 'failed', 'due', 'errors_last_hour', 'failed_last_hour'):
                setattr(total, name, getattr(total, name) + getattr(status, name))
            if status.oldest_due_age is not None:
                total.oldest_due_age = max(total.oldest_due_age or 0.0, status.oldest_due_age)
        return total

    def as_dict(self) -> dict:
        return {
            'checked_at': self.checked_at.isoformat(),
            'messengers': {alias: status.as_dict() for alias, status in sorted(self.messengers.items())},
            'totals': self.totals.as_dict(),
            'awaiting_preparation': self.awaiting_preparation,
        }


def due_since() -> Case:
    """When a due dispatch became sendable: its claim's lease ran out, its retry time came, or it was created."""
    return Case(
        When(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING, lease_until__isnull=False, then=F('lease_until')),
        default=Coalesce('next_attempt_at', 'time_created'),
    )


def get_queue_status(now: Optional[datetime] = None) -> QueueStatus:
    """Measure the queue with a few aggregate queries (see the module docstring)."""
    now = now or timezone.now()
    since = now - RECENT
    status = QueueStatus(checked_at=now)

    def of(alias: str) -> MessengerStatus:
        return status.messengers.setdefault(alias, MessengerStatus())

    rows = (
        Dispatch.objects.filter(dispatch_status__in=list(QUEUE_STATUSES))
        .values('messenger', 'dispatch_status')
        .annotate(count=Count('id'), recent=Count('id', filter=Q(time_dispatched__gte=since)))
        .order_by()
    )
    for row in rows:
        messenger = of(row['messenger'])
        name = QUEUE_STATUSES[row['dispatch_status']]
        setattr(messenger, name, row['count'])
        if name == 'failed':
            messenger.failed_last_hour = row['recent']

    due = Dispatch.objects.sendable(now).values('messenger').annotate(count=Count('id'), since=Min(due_since()))
    for row in due.order_by():
        messenger = of(row['messenger'])
        messenger.due = row['count']
        messenger.oldest_due_age = max((now - row['since']).total_seconds(), 0.0)

    errors = (
        DispatchError.objects.filter(time_created__gte=since)
        .values('dispatch__messenger')
        .annotate(count=Count('id'))
        .order_by()
    )
    for row in errors:
        of(row['dispatch__messenger']).errors_last_hour = row['count']

    status.awaiting_preparation = Message.get_without_dispatches().count()
    return status


def format_age(seconds: Optional[float]) -> str:
    """``95.2`` -> ``1m35s``; ``None`` (nothing due) -> ``-``."""
    if seconds is None:
        return '-'
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f'{hours}h{minutes:02d}m'
    if minutes:
        return f'{minutes}m{secs:02d}s'
    return f'{secs}s'


COLUMNS = (
    ('pending', 'pending'),
    ('processing', 'processing'),
    ('error', 'error'),
    ('failed', 'failed'),
    ('due', 'due'),
    ('oldest due', 'oldest_due_age'),
    ('errors 1h', 'errors_last_hour'),
    ('failed 1h', 'failed_last_hour'),
)


def format_table(status: QueueStatus) -> List[str]:
    """The text of ``sitemessage_status``: one line per messenger, then the totals."""
    rows = [('messenger', *(title for title, _name in COLUMNS))]
    for alias, messenger in [*sorted(status.messengers.items()), ('total', status.totals)]:
        rows.append(
            (
                alias,
                *(
                    format_age(messenger.oldest_due_age) if name == 'oldest_due_age' else str(getattr(messenger, name))
                    for _title, name in COLUMNS
                ),
            )
        )
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return [
        '  '.join(
            cell.ljust(width) if index == 0 else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    ]
