"""Telling workers that there is something to send, right after the scheduling transaction commits.

On PostgreSQL a ``NOTIFY sitemessage_queue`` wakes ``sitemessage_worker`` processes at once
(they ``LISTEN``); elsewhere workers poll. ``SITEMESSAGE_ENQUEUE_ON_SCHEDULE`` can also enqueue
the send task of a task system: ``'celery'`` or ``'django_tasks'``.
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any, Optional

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from .. import signals
from ..settings import get_setting

LOGGER = logging.getLogger('sitemessage.wakeup')  # the documented logger name
CHANNEL = 'sitemessage_queue'


def connect() -> None:
    """Wake workers whenever models announce new work (:data:`sitemessage.signals.queue_changed`)."""
    signals.queue_changed.connect(on_queue_changed, dispatch_uid='sitemessage.background.wakeup')


def on_queue_changed(sender: Any, using: Optional[str] = None, **kwargs: Any) -> None:
    """Receive :data:`~sitemessage.signals.queue_changed`: see :func:`queue_changed`."""
    queue_changed(using)


def queue_changed(using: Optional[str] = None) -> None:
    """Wake workers (and enqueue a send task, if configured) once the current transaction commits.

    A misconfigured ``SITEMESSAGE_ENQUEUE_ON_SCHEDULE`` raises here, before the commit (nothing is
    stored); what fails after the commit (a broker that is down) is only logged: the message is
    stored and the next delivery run sends it, and a caller that retried would duplicate it.
    """
    using = using or DEFAULT_DB_ALIAS
    target = get_setting('ENQUEUE_ON_SCHEDULE')
    if target:
        from .tasks import check_target  # imports Celery (optional, ~70 ms): only where it is configured

        check_target(target)
    transaction.on_commit(lambda: _announce(using), using=using)


def _announce(using: str) -> None:
    connection = connections[using]
    if connection.vendor == 'postgresql':
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'NOTIFY {CHANNEL}')
        except Exception as error:  # committed already: workers find it on their next poll
            LOGGER.warning(
                'Could not notify workers of new messages (%s: %s); they pick them up on their next pass.',
                type(error).__name__,
                error,
            )
    target = get_setting('ENQUEUE_ON_SCHEDULE')
    if target:
        from .tasks import enqueue_send  # see above: Celery only where it is configured

        try:
            enqueue_send(target)
        except Exception as error:
            # No URL or credentials here: Celery's/kombu's error texts name the broker's host at most.
            LOGGER.error(
                'Could not enqueue a send task on %s (%s: %s); the message is stored and the next '
                'delivery run sends it.',
                target,
                type(error).__name__,
                error,
            )


def listen(using: Optional[str] = None) -> bool:
    """Start listening for queue notifications; return False where the database cannot notify."""
    connection = connections[using or DEFAULT_DB_ALIAS]
    if connection.vendor != 'postgresql':
        return False
    with connection.cursor() as cursor:
        cursor.execute(f'LISTEN {CHANNEL}')
    return True


def wait_for_work(timeout: float, using: Optional[str] = None) -> bool:
    """Block up to ``timeout`` seconds for a queue notification; return whether one came.

    Without notifications (not PostgreSQL, or :func:`listen` not called) this just sleeps.
    """
    connection = connections[using or DEFAULT_DB_ALIAS]
    raw = connection.connection if connection.vendor == 'postgresql' else None
    if raw is None:
        time.sleep(timeout)
        return False
    if callable(getattr(raw, 'notifies', None)):  # psycopg 3
        notified = bool(list(raw.notifies(timeout=timeout, stop_after=1)))
        # Drain the rest: several schedulings while we slept need one wake-up only.
        while list(raw.notifies(timeout=0.01, stop_after=1)):
            pass
        return notified
    ready, _w, _x = select.select([raw], [], [], timeout)  # psycopg2
    if ready:
        raw.poll()
    notified = bool(raw.notifies)
    raw.notifies.clear()
    return notified
