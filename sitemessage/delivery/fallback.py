"""Fallback dispatches: a dispatch failed for good through one messenger is tried through the next.

Called by :func:`~sitemessage.delivery.handover.store_outcomes` once a batch's outcomes are
stored (the point where the engine records permanent failures): for each dispatch stored Failed
whose message type names ``fallback_messengers``, one dispatch through the next messenger where
the recipient has an address is created, linked by ``fallback_of``. A few queries a batch,
never one per dispatch; the unique ``fallback_of`` makes it happen once per failure even when
two workers store the same one.
"""

from __future__ import annotations

import logging
from typing import List, Sequence

from ..exceptions import UnknownMessageTypeError
from ..fallback import next_fallback
from ..models import Dispatch
from ..registry import get_registered_message_type

LOGGER = logging.getLogger(__name__)


def wants_fallback(dispatch: Dispatch) -> bool:
    """Whether a dispatch just failed for good through a messenger of its type's ``fallback_messengers``."""
    if dispatch.dispatch_status != Dispatch.DISPATCH_STATUS_FAILED or dispatch.recipient_id is None:
        return False
    try:
        message_cls = get_registered_message_type(dispatch.message.cls)
    except UnknownMessageTypeError:
        return False
    # A critical type already went out on every messenger at once.
    return not message_cls.send_on_all_messengers and dispatch.messenger in (message_cls.fallback_messengers or ())


def create_fallback_dispatches(dispatches: Sequence[Dispatch]) -> List[Dispatch]:
    """Create the fallback dispatches of those of ``dispatches`` that failed for good; return them.

    A recipient with no address through any later messenger, or already sent this message
    through it, gets none (the failure stays as it is, with its reason).
    """
    candidates = [dispatch for dispatch in dispatches if wants_fallback(dispatch)]
    if not candidates:
        return []
    types = {dispatch.pk: get_registered_message_type(dispatch.message.cls) for dispatch in candidates}
    stored = Dispatch.objects.using(candidates[0]._state.db).failed_for_fallback([d.pk for d in candidates])
    planned = []
    for failed in stored:
        recipient = next_fallback(types[failed.pk], failed.messenger, failed.recipient)
        if recipient is not None:
            planned.append(Dispatch.for_recipient(recipient, message_id=failed.message_id, fallback_of=failed))
    taken = Dispatch.objects.using(candidates[0]._state.db).existing_routes(planned)
    fresh = [d for d in planned if (d.message_id, d.messenger, d.recipient_id) not in taken]
    Dispatch.objects.using(candidates[0]._state.db).create_fallbacks(fresh)
    if fresh:
        LOGGER.info('Created %s fallback dispatches.', len(fresh))
    return fresh
