"""Rate limits shared by every worker on every host, kept in Django's cache.

A fixed one-second window per key: ``cache.add`` creates the window's counter, ``cache.incr``
takes a slot atomically in Redis, Memcached and LocMemCache, so all workers sending through
one messenger respect one quota. Django's database cache increments by a read then a write,
so there each slot is also confirmed by ``cache.add`` of a key of its own (the table's primary
key makes that atomic). A worker that finds the window full sleeps until the next one.

Configure ``SITEMESSAGE_RATE_LIMITS = {'telegram': 30, 'smtp': 14}`` (messages per second per
messenger alias) and ``SITEMESSAGE_RATE_LIMITS_PER_RECIPIENT = {'telegram': 1}``.
``LocMemCache`` is per process: use a shared cache (Redis, Memcached, database) when several
processes send (FileBasedCache is not safe across processes either: its ``add`` is not atomic).

The same cache holds the pauses a service imposes (:func:`pause`, :func:`paused_for`): when it
says "too many requests, retry after N seconds", every worker waits, not only the one told.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

from django.core.cache import caches
from django.core.cache.backends.base import BaseCache

from ..exceptions import SiteMessageConfigurationError
from ..settings import get_setting

LOGGER = logging.getLogger(__name__)

SLEEP: Callable[[float], None] = time.sleep
CLOCK: Callable[[], float] = time.time


def limit_for(alias: str, per_recipient: bool = False) -> Optional[float]:
    """Return the configured messages-per-second limit of a messenger (None: unlimited)."""
    limits = get_setting('RATE_LIMITS_PER_RECIPIENT' if per_recipient else 'RATE_LIMITS') or {}
    limit = limits.get(alias)
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
        setting = 'RATE_LIMITS_PER_RECIPIENT' if per_recipient else 'RATE_LIMITS'
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_{setting}[{alias!r}] must be a positive number of messages per second, got {limit!r}.'
        )
    return float(limit)


def acquire(key: str, per_second: float, max_wait: float = 60.0) -> float:
    """Take one slot of ``key``'s quota, sleeping until one is free; return the seconds waited.

    Limits below one a second use a window of ``1 / per_second`` seconds holding one slot.
    """
    cache = caches[get_setting('RATE_LIMIT_CACHE')]
    window = 1.0 if per_second >= 1 else 1.0 / per_second
    slots = max(int(per_second * window), 1)
    # BaseCache.incr is get() then set(): two workers can both get the same slot from it.
    confirm_slots = type(cache).incr is BaseCache.incr
    waited = 0.0
    while True:
        now = CLOCK()
        window_index = math.floor(now / window)
        counter_key = f'sitemessage:rl:{key}:{window}:{window_index}'
        cache.add(counter_key, 0, timeout=int(window) + 2)
        try:
            taken = cache.incr(counter_key)
        except ValueError:  # the counter expired between add and incr: take the next window
            taken = slots + 1
        if taken <= slots:
            if confirm_slots and not cache.add(f'{counter_key}:{taken}', 1, timeout=int(window) + 2):
                continue  # a read-then-write incr gave this slot to another worker too: try the next one
            if math.floor(CLOCK() / window) == window_index:
                return waited
            continue  # a slow cache let the window end meanwhile: sending now would overfill the next one
        pause = (window_index + 1) * window - now
        if waited + pause > max_wait:
            raise TimeoutError(f'Rate limit {per_second}/s of `{key}` still full after {waited:.1f} s.')
        SLEEP(pause)
        waited += pause


# Provider pauses ------------------------------------------------------------------------------
#
# A service that answers "too many requests, wait N seconds" (Telegram's retry_after, HTTP 429's
# Retry-After, Facebook's and VK's rate-limit codes) limits the account, not the process: every
# worker on every host must stop sending until the wait is over. The end of the wait is kept in
# the same cache as the quotas, under the key the messenger names (its alias and a fingerprint
# of its credentials), as seconds since the epoch: hosts share the wall clock, not a monotonic one.


def _pause_key(key: str) -> str:
    return f'sitemessage:pause:{key}'


def pause(key: str, seconds: float) -> float:
    """Make every worker wait ``seconds`` before sending under ``key``; return when the pause ends (epoch).

    An existing longer pause is kept. Read then write: two workers pausing at once may leave the
    shorter of their two waits, which only means a retry comes a little early. A write that fails
    is tried again, five times within 0.4 s: Django's database cache on SQLite refuses a write at
    once ("database is locked") while another process writes. A cache that still cannot be reached
    is logged and skipped: the service's own refusals still slow each worker down.
    """
    until = CLOCK() + max(float(seconds), 0.0)
    for wait in _PAUSE_WRITE_RETRIES:
        try:
            cache = caches[get_setting('RATE_LIMIT_CACHE')]
            current = cache.get(_pause_key(key))
            if isinstance(current, (int, float)) and current >= until:
                return float(current)
            cache.set(_pause_key(key), until, timeout=math.ceil(seconds) + 1)
            return until
        except Exception as error:  # a cache outage must not stop delivery
            if wait is None:
                LOGGER.warning('Could not share the pause of `%s` (%s: %s)', key, type(error).__name__, error)
            else:
                SLEEP(wait)
    return until


_PAUSE_WRITE_RETRIES = (0.01, 0.02, 0.05, 0.1, 0.2, None)  # seconds before the next try; None: the last


def paused_until(key: str) -> float:
    """Return when the pause of ``key`` ends (epoch seconds; 0.0 when there is none): one cache read."""
    try:
        until = caches[get_setting('RATE_LIMIT_CACHE')].get(_pause_key(key))
    except Exception as error:  # see pause()
        LOGGER.warning('Could not read the pause of `%s` (%s: %s)', key, type(error).__name__, error)
        return 0.0
    return float(until) if isinstance(until, (int, float)) and not isinstance(until, bool) else 0.0


def paused_for(key: str) -> float:
    """Return how many seconds every worker must still wait before sending under ``key`` (0.0: none)."""
    return max(paused_until(key) - CLOCK(), 0.0)
