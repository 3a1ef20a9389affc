"""Telling workers that there is something to send, right after the scheduling transaction commits.

On PostgreSQL a ``NOTIFY sitemessage_queue`` wakes ``sitemessage_worker`` processes at once
(they ``LISTEN``); elsewhere workers poll. ``SITEMESSAGE_ENQUEUE_ON_SCHEDULE`` can also enqueue
the send task of a task system: ``'celery'`` or ``'django_tasks'``.
"""
from __future__ import annotations

import logging
import select
from typing import Optional

from django.db import DEFAULT_DB_ALIAS, connections, transaction

from .settings import get_setting

LOGGER = logging.getLogger(__name__)
CHANNEL = 'sitemessage_queue'


def queue_changed(using: Optional[str] = None) -> None:
    """Wake workers (and enqueue a send task, if configured) once the current transaction commits."""
    using = using or DEFAULT_DB_ALIAS
    transaction.on_commit(lambda: _announce(using), using=using)


def _announce(using: str) -> None:
    connection = connections[using]
    if connection.vendor == 'postgresql':
        with connection.cursor() as cursor:
            cursor.execute(f'NOTIFY {CHANNEL}')
    target = get_setting('ENQUEUE_ON_SCHEDULE')
    if target:
        from .tasks import enqueue_send
        enqueue_send(target)


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
        import time
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
