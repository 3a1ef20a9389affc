"""Checks of a message type's ``digest_window`` and ``throttle``: refused with the bad value named.

Checked when the type is registered and again when a message is scheduled (a value may come from
a property of the instance). Never imports models: the registry imports it while apps load.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional, Tuple, Type, Union

from .exceptions import SiteMessageConfigurationError

Duration = Union[timedelta, int, float]


def positive_duration(value: Any, what: str) -> timedelta:
    """``value`` (a ``timedelta`` or seconds) as a positive ``timedelta``; anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, (timedelta, int, float)):
        raise SiteMessageConfigurationError(
            f'{what} must be a timedelta or a number of seconds, got {value!r} ({type(value).__name__}).'
        )
    duration = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if duration <= timedelta(0):
        raise SiteMessageConfigurationError(f'{what} must be positive, got {value!r}.')
    return duration


def digest_window_of(message: Any) -> Optional[timedelta]:
    """The digest window of a message type (or message) as a ``timedelta``; None: it has none."""
    value = getattr(message, 'digest_window', None)
    if value is None:
        return None
    return positive_duration(value, f'digest_window of message type `{message.get_alias()}`')


def throttle_of(message: Any) -> Optional[Tuple[int, timedelta]]:
    """The throttle of a message type (or message) as ``(limit, period)``; None: it has none."""
    value = getattr(message, 'throttle', None)
    if value is None:
        return None
    what = f'throttle of message type `{message.get_alias()}`'
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise SiteMessageConfigurationError(
            f'{what} must be a pair (limit, period), e.g. (5, timedelta(hours=1)), got {value!r}.'
        )
    limit, period = value
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise SiteMessageConfigurationError(
            f'{what}: the limit must be a whole number, got {limit!r} ({type(limit).__name__}).'
        )
    if limit < 1:
        raise SiteMessageConfigurationError(f'{what}: the limit must be positive, got {limit!r}.')
    return limit, positive_duration(period, f'{what}: the period')


def check_message_type_limits(message_type: Type[Any]) -> None:
    """Refuse a type whose class-level ``digest_window`` or ``throttle`` is invalid (properties are checked later)."""
    for name, check in (('digest_window', digest_window_of), ('throttle', throttle_of)):
        if not isinstance(getattr(message_type, name, None), property):
            check(message_type)


def has_limits(message: Any) -> bool:
    """Whether a message (or type) declares a digest window or a throttle."""
    return getattr(message, 'digest_window', None) is not None or getattr(message, 'throttle', None) is not None
