"""The options of one scheduling: when to send (``send_at``), until when (``expires_at``), an idempotency key.

Checked all at once before anything is stored; a bad value raises
:class:`~sitemessage.exceptions.SchedulingValueError` (or :class:`~sitemessage.exceptions.SchedulingTypeError`)
naming it. See docs/send-later.rst and docs/idempotency.rst.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional, Sequence

from django.conf import settings
from django.utils import timezone

from .exceptions import SchedulingTypeError, SchedulingValueError
from .models import IDEMPOTENCY_KEY_LENGTH, Dispatch, Message, MessageTuple


@dataclass(frozen=True)
class ScheduleOptions:
    """``send_at``/``expires_at`` (aware datetimes when ``USE_TZ``) and ``idempotency_key`` of a scheduling."""

    send_at: Optional[datetime] = None
    expires_at: Optional[datetime] = None
    idempotency_key: Optional[str] = None

    @classmethod
    def checked(cls, send_at: Any = None, expires_at: Any = None, idempotency_key: Any = None) -> 'ScheduleOptions':
        """Return the options, or raise an error naming the refused value."""
        send_at = check_time('send_at', send_at)
        expires_at = check_time('expires_at', expires_at)
        if send_at is not None and expires_at is not None and expires_at <= send_at:
            raise SchedulingValueError(
                f'expires_at ({expires_at.isoformat()}) must be later than send_at ({send_at.isoformat()}).'
            )
        return cls(send_at, expires_at, check_idempotency_key(idempotency_key))

    @property
    def timed(self) -> bool:
        """Whether the dispatches get a time (``send_at`` or ``expires_at``)."""
        return self.send_at is not None or self.expires_at is not None

    def message_fields(self) -> dict:
        """The fields a stored message takes from these options."""
        return {'send_at': self.send_at, 'expires_at': self.expires_at, 'idempotency_key': self.idempotency_key}

    def dispatch_fields(self) -> dict:
        """The fields its dispatches take: ``send_at`` is their "not before" time (``next_attempt_at``)."""
        return {'next_attempt_at': self.send_at, 'expires_at': self.expires_at}

    def apply(self, results: Sequence[MessageTuple]) -> None:
        """Write the options onto messages stored without them (two bulk updates) and onto the objects returned.

        Runs in the scheduling's transaction, so no worker sees their dispatches before it. Only
        pending dispatches not claimed change: for a grouped message, the last scheduling decides.
        """
        if not (self.timed or self.idempotency_key) or not results:
            return
        ids = [message.pk for message, _dispatches in results]
        Message.objects.filter(pk__in=ids).update(**self.message_fields())
        if self.timed:
            Dispatch.objects.filter(
                message_id__in=ids, dispatch_status=Dispatch.DISPATCH_STATUS_PENDING, claim_token__isnull=True
            ).update(**self.dispatch_fields())
        for message, dispatches in results:
            for name, value in self.message_fields().items():
                setattr(message, name, value)
            if self.timed and isinstance(dispatches, list):  # a grouped message returns a query: read anew
                for dispatch in dispatches:
                    for name, value in self.dispatch_fields().items():
                        setattr(dispatch, name, value)


def check_time(name: str, value: Any) -> Optional[datetime]:
    """``value`` if it is None or a datetime usable here (aware when ``USE_TZ``); else an error naming it."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise SchedulingTypeError(f'{name} must be a datetime, got {value!r}.')
    if settings.USE_TZ and timezone.is_naive(value):
        raise SchedulingValueError(f'{name} must be an aware datetime (USE_TZ is True), got the naive {value!r}.')
    return value


def check_idempotency_key(value: Any) -> Optional[str]:
    """``value`` if it is None or a non-empty string that fits the key column; else an error naming it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise SchedulingTypeError(f'idempotency_key must be a string, got {value!r}.')
    if not value:
        raise SchedulingValueError("idempotency_key must not be empty, got ''.")
    if len(value) > IDEMPOTENCY_KEY_LENGTH:
        raise SchedulingValueError(
            f'idempotency_key must be at most {IDEMPOTENCY_KEY_LENGTH} characters, got {len(value)}: {value[:50]!r}...'
        )
    return value
