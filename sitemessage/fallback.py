"""Channel fallback: which messenger a user is tried through next, and critical types sent on all at once.

A message type names an ordered list of messengers (``fallback_messengers``). The engine asks
:func:`next_fallback` when a dispatch through one of them fails for good
(:mod:`sitemessage.delivery.fallback` creates the dispatches, in bulk); a type with
``send_on_all_messengers`` gets a dispatch through every one of them when it is scheduled
(:func:`on_all_messengers`). Addresses come from the messengers' ``get_address()``, so only a
recipient that is a user can be reached through another messenger. No database access here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Type

from .exceptions import UnknownMessengerError
from .headers import safe_recipients
from .recipients import Recipient
from .registry import get_registered_messenger_object

if TYPE_CHECKING:  # pragma: nocover
    from .messages.base import MessageBase

LOGGER = logging.getLogger(__name__)


def user_recipient(messenger_alias: str, user: Any) -> Optional[Recipient]:
    """The recipient of ``user`` through a messenger, or None when the user has no (safe) address there."""
    try:
        messenger = get_registered_messenger_object(messenger_alias)
    except UnknownMessengerError:
        LOGGER.error('Fallback messenger `%s` is not registered: skipped.', messenger_alias)
        return None
    [recipient] = messenger.structure_recipients_data([user])
    if not recipient.address:
        return None
    safe = safe_recipients([recipient])  # a stored address with a line break is left out, logged
    return safe[0] if safe else None


def next_fallback(message_cls: Type['MessageBase'], messenger_alias: str, user: Any) -> Optional[Recipient]:
    """The recipient to try after a failure through ``messenger_alias``: the next messenger of the type's
    ``fallback_messengers`` where ``user`` has an address; None at the end of the list, or when that
    messenger is not in it.
    """
    chain = tuple(message_cls.fallback_messengers or ())
    if messenger_alias not in chain:
        return None
    for alias in chain[chain.index(messenger_alias) + 1 :]:
        recipient = user_recipient(alias, user)
        if recipient is not None:
            return recipient
    return None


def flat_recipients(recipients: Any) -> List[Recipient]:
    """One Recipient, a list of them, or a list holding such lists (``recipients(...),``), as one list."""
    if isinstance(recipients, Recipient):
        return [recipients]
    flat: List[Recipient] = []
    for item in recipients:
        if isinstance(item, Recipient):
            flat.append(item)
        elif isinstance(item, (list, tuple)):
            flat.extend(flat_recipients(item))
        else:
            flat.append(item)  # normalize_recipients() names what is wrong with it
    return flat


def on_all_messengers(message_cls: Type['MessageBase'], recipients: Any) -> List[Recipient]:
    """Add, for each user recipient through one of the type's ``fallback_messengers``, one through each other.

    A user without an address through one of them is not sent there (when at least one other
    has an address: otherwise the recipient given is kept, and its dispatch fails with why).
    """
    chain: Sequence[str] = tuple(message_cls.fallback_messengers or ())
    result: List[Recipient] = []
    done = set()
    for recipient in flat_recipients(recipients):
        user = getattr(recipient, 'user', None)
        if not isinstance(recipient, Recipient) or user is None or recipient.messenger not in chain:
            result.append(recipient)
            continue
        if user.pk in done:
            continue
        done.add(user.pk)
        found = [r for r in (user_recipient(alias, user) for alias in chain) if r is not None]
        result.extend(found or [recipient])
    return result
