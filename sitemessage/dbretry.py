"""Surviving a lost database connection: which errors mean it, how to drop it, how long to wait.

Used by the worker (a pass is retried after a backoff) and when a batch's outcomes are stored
(e-mails already handed to a server must not be sent again only because the database was
away for a few seconds).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, Optional, Tuple, Type, TypeVar

from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connections

LOGGER = logging.getLogger(__name__)
T = TypeVar('T')

# Storing outcomes is retried for about 15 s (0.5 + 1 + 2 + 4 + 8) before the lease takes over.
STORE_ATTEMPTS = 6
STORE_FIRST_DELAY = 0.5


def connection_errors(using: str = DEFAULT_DB_ALIAS) -> Tuple[Type[BaseException], ...]:
    """Errors meaning "the database connection is gone": Django's, and the driver's own.

    The driver's come from the raw connection the worker waits on for notifications.
    """
    errors: Tuple[Type[BaseException], ...] = (OperationalError, InterfaceError)
    database = getattr(connections[using], 'Database', None)
    for name in ('OperationalError', 'InterfaceError'):
        error = getattr(database, name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors += (error,)
    return errors


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubled each time up to ``cap``, jittered."""
    delay = min(base * 2 ** max(failures - 1, 0), cap)
    return random.uniform(delay / 2, delay)  # several workers do not hammer a database coming back at once


def close_connection(using: str = DEFAULT_DB_ALIAS) -> None:
    """Drop the (broken) connection; Django opens a new one on the next query."""
    try:
        connections[using].close()
    except Exception as error:  # closing a dead connection may fail too: it is gone either way
        LOGGER.debug('Closing the broken database connection failed: %s', error)
        connections[using].connection = None


def retry_on_connection_loss(
    action: Callable[[], T],
    what: str,
    attempts: int = STORE_ATTEMPTS,
    first_delay: float = STORE_FIRST_DELAY,
    before_retry: Optional[Callable[[], None]] = None,
    using: str = DEFAULT_DB_ALIAS,
) -> T:
    """Run ``action``; on a lost connection, reconnect and run it again, ``attempts`` times in all.

    Inside a transaction (``atomic``) nothing is retried: the transaction is broken already.
    """
    errors = connection_errors(using)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except errors as error:
            if attempt == attempts or connections[using].in_atomic_block:
                raise
            delay = backoff_delay(attempt, first_delay, first_delay * 2 ** (attempts - 2))
            LOGGER.warning(
                'Database connection lost while %s (%s: %s); retrying in %.1f s.',
                what,
                type(error).__name__,
                str(error).strip(),
                delay,
            )
            close_connection(using)
            time.sleep(delay)
            if before_retry is not None:
                before_retry()
    raise AssertionError('unreachable')  # pragma: no cover
