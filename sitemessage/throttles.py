"""Throttles: at most ``limit`` messages of a type per recipient per period; the rest are not sent.

A message type declares ``throttle = (5, timedelta(hours=1))``. Recipients over the limit get a
dispatch recorded as failed with the reason (see :func:`throttled_reason`), never silently
dropped, or, when the type has a digest window too, the message joins their digest instead.
"""

from __future__ import annotations

from datetime import timedelta
from typing import List, Sequence, Tuple

from django.utils import timezone

from .recipients import Recipient

#: The error text of a throttled dispatch starts with this.
THROTTLED = 'throttled'


def split_by_throttle(
    message_class: str, recipients: Sequence[Recipient], limit: int, period: timedelta
) -> Tuple[List[Recipient], List[Recipient]]:
    """Split recipients into those still under the limit and those over it (one count query).

    Dispatches already sent, pending or in error within the period count; failed ones do not.
    """
    from .models import Dispatch

    if not recipients:
        return [], []
    counts = Dispatch.objects.count_recent(message_class, recipients, timezone.now() - period)
    under: List[Recipient] = []
    over: List[Recipient] = []
    for recipient in recipients:
        key = (recipient.messenger, '' if recipient.address is None else recipient.address)
        (under if counts.get(key, 0) < limit else over).append(recipient)
    return under, over


def throttled_reason(message_class: str, limit: int, period: timedelta) -> str:
    """The error recorded on a throttled dispatch."""
    return f'{THROTTLED}: at most {limit} message(s) of type `{message_class}` per recipient every {period}'
