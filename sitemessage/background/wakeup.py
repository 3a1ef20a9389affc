"""Telling workers that there is something to send, right after the scheduling transaction commits.

Idle ``sitemessage_worker`` processes are woken through the channel ``SITEMESSAGE_WAKEUP`` names
(:mod:`sitemessage.background.channels`): ``NOTIFY`` on PostgreSQL, Redis pub/sub, or UNIX
datagram sockets on this host (SQLite, MariaDB/MySQL); with none they poll.
``SITEMESSAGE_ENQUEUE_ON_SCHEDULE`` can also enqueue the send task of a task system:
``'celery'`` or ``'django_tasks'``.
"""

from __future__ import annotations

from typing import Any, Optional

from django.db import DEFAULT_DB_ALIAS, transaction

from .. import signals
from ..settings import get_setting
from .channels import CHANNEL, LOGGER, Channel, get_channel, listen, wait_for_work

__all__ = ['CHANNEL', 'LOGGER', 'connect', 'listen', 'on_queue_changed', 'queue_changed', 'wait_for_work']


def connect() -> None:
    """Wake workers whenever models announce new work (:data:`sitemessage.signals.queue_changed`)."""
    signals.queue_changed.connect(on_queue_changed, dispatch_uid='sitemessage.background.wakeup')


def on_queue_changed(sender: Any, using: Optional[str] = None, inserted: bool = False, **kwargs: Any) -> None:
    """Receive :data:`~sitemessage.signals.queue_changed`: see :func:`queue_changed`."""
    queue_changed(using, inserted=inserted)


def queue_changed(using: Optional[str] = None, inserted: bool = False) -> None:
    """Wake workers (and enqueue a send task, if configured) once the current transaction commits.

    ``inserted``: the work is new dispatch rows. Where the database announces those itself (the
    ``NOTIFY`` trigger on PostgreSQL), nothing is left to do after the commit unless a send task is
    to be enqueued: scheduling then costs no round trip more than storing the rows.

    A misconfigured ``SITEMESSAGE_ENQUEUE_ON_SCHEDULE`` or ``SITEMESSAGE_WAKEUP`` raises here, before
    the commit (nothing is stored); what fails after the commit (a broker that is down) is only logged: the message is
    stored and the next delivery run sends it, and a caller that retried would duplicate it.
    """
    using = using or DEFAULT_DB_ALIAS
    target = get_setting('ENQUEUE_ON_SCHEDULE')
    if target:
        from .tasks import check_target  # imports Celery (optional, ~70 ms): only where it is configured

        check_target(target)
    channel = get_channel(using)
    announce = not (inserted and channel.announces_inserts(using))
    if announce or target:
        transaction.on_commit(lambda: _announce(using, channel if announce else None), using=using)


def _announce(using: str, channel: Optional[Channel]) -> None:
    if channel is not None:
        channel.announce_safely(using)  # committed already: a worker that misses it finds it on its next poll
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
