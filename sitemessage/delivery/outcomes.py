"""What the engine hands a messenger and what it gets back: a message with its dispatches, and each attempt.

This module imports only :mod:`sitemessage.exceptions`, so the models can use it: a claimed
dispatch carries its :class:`Attempt` until the outcome is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, NamedTuple, Optional, Type

from ..exceptions import MessengerException

if TYPE_CHECKING:  # pragma: nocover
    from ..messages.base import MessageBase
    from ..models import Dispatch, Message

# How a dispatch's error log starts when its messenger could not connect (see warm_up_failure()).
WARM_UP_FAILURE = 'Messenger warm-up failed'


class MessageWork(NamedTuple):
    """A message with the dispatches of it that one messenger delivers now.

    ``send_many()`` and ``prepare_batch()`` get a list of these; being a tuple, it unpacks as
    ``(message type, message, dispatches)``, the shape messengers written before it expect.
    """

    message_cls: Type['MessageBase']
    message: 'Message'
    dispatches: List['Dispatch']


@dataclass
class Attempt:
    """One delivery attempt of a claimed dispatch, from the claim until its outcome is stored.

    ``retry_count`` and ``stored_text`` are the dispatch's values when it was claimed: a retry
    counts once per attempt however often a messenger marks it, and the compiled text is written
    back only when it changed. ``marked`` says whether the messenger reported an outcome;
    ``retry_after`` is the service's hint (seconds) for the next attempt of a dispatch in error.
    ``on_sent``, set by the engine, is told of the dispatch as soon as it is marked sent (the
    recorder writes it down before the batch ends). ``recipient_refused``: the dispatch failed
    because the service refused its address for good (it counts toward suppressing the address).
    """

    retry_count: int
    stored_text: Optional[str]
    marked: bool = False
    retry_after: Optional[float] = None
    recipient_refused: bool = False
    on_sent: Optional[Callable[['Dispatch'], None]] = field(default=None, repr=False, compare=False)


def describe_error(error: Any) -> str:
    """Return the text stored for a failed attempt: the exception's class and message."""
    if isinstance(error, BaseException):
        text = str(error)
        name = type(error).__name__
        return f'{name}: {text}' if text and not isinstance(error, MessengerException) else (text or name)
    return str(error)


def warm_up_failure(error: Optional[BaseException]) -> str:
    """The error log of a dispatch whose messenger could not connect (the run report looks for it)."""
    return f'{WARM_UP_FAILURE}: {describe_error(error)}'
