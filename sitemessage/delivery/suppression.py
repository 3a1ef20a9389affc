"""The suppression list in the send loop: suppressed addresses are never attempted, refused ones are counted.

A claim notes on each dispatch whether its (messenger, address) is suppressed (one query a
batch, :meth:`~sitemessage.models.DispatchQuerySet.claim`); :func:`fail_suppressed` fails those
before their messenger sees them. :func:`handle_permanent_failures` is the one point where the
engine handles dispatches that failed for good, once their outcomes are stored. See docs/suppression.rst.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Sequence

from ..models import Dispatch, Suppression, suppressed_error
from ..settings import check_setting, get_setting

if TYPE_CHECKING:  # pragma: nocover
    from ..messengers.base import MessengerBase

LOGGER = logging.getLogger(__name__)


def fail_suppressed(messenger: 'MessengerBase', dispatches: List[Dispatch]) -> List[Dispatch]:
    """Fail the dispatches a claim found suppressed (``suppressed: <reason>``); return the others."""
    kept = []
    for dispatch in dispatches:
        if dispatch.suppressed_reason:
            messenger.mark_failed(dispatch, suppressed_error(dispatch.suppressed_reason))
        else:
            kept.append(dispatch)
    return kept


def suppress_after_failures() -> int | None:
    """After how many permanent refusals an address is suppressed; None: never."""
    value = get_setting('SUPPRESS_AFTER_FAILURES')
    if value is None:
        return None
    return check_setting(value, 'positive_int', 'SITEMESSAGE_SUPPRESS_AFTER_FAILURES')


def handle_permanent_failures(dispatches: Sequence[Dispatch]) -> None:
    """Act on the dispatches of a stored batch that failed for good: count the refused addresses.

    Called once per stored batch (a few queries when some address was refused, none otherwise);
    an error here is logged, the outcomes are stored already.
    """
    failed = [d for d in dispatches if d.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED]
    refused = [d for d in failed if d.attempt is not None and d.attempt.recipient_refused and d.address]
    if not refused:
        return
    threshold = suppress_after_failures()
    if threshold is None:
        return
    try:
        using = refused[0]._state.db or 'default'
        suppressed = Suppression.objects.using(using).count_refusals(
            [(d.messenger, d.address) for d in refused], threshold, note=str(refused[-1].error_log or '')
        )
    except Exception:
        LOGGER.exception('Could not count %s permanent refusals toward the suppression list', len(refused))
        return
    if suppressed:
        LOGGER.info('%s address(es) suppressed after %s permanent failure(s)', suppressed, threshold)
