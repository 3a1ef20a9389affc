"""Recording sent dispatches as they go, so that a killed worker sends almost nothing twice.

Outcomes are written in bulk when a batch ends. Until then a killed worker (kill -9, the OOM
killer) leaves what it had sent in Processing, and after the lease another run sends it again.
A :class:`SentRecorder` marks sent dispatches Sent every ``SITEMESSAGE_OUTCOME_FLUSH_SIZE`` of
them, in one query each time:

* where the database takes concurrent writes (PostgreSQL, MariaDB, MySQL), on a thread of its
  own: sending never waits for those commits, and while one is written the next ones gather;
* on SQLite (one writer at a time, a file sync per commit), on the claiming thread, between
  units of work.

Off unless the setting is given (see :func:`flush_size_for`).
"""

from __future__ import annotations

import logging
import threading
from typing import Iterable, List, Optional

from django.db import connections as db_connections

from ..models import Dispatch
from ..settings import check_setting, get_setting

LOGGER = logging.getLogger(__name__)

SENT = Dispatch.DISPATCH_STATUS_SENT


def configured_flush_size() -> Optional[int]:
    """How many sent dispatches to record at a time (``SITEMESSAGE_OUTCOME_FLUSH_SIZE``); None: only per batch.

    Off by default: each record is a commit, and on a machine the database shares with the
    senders that cost about 5 % of the throughput (``benchmarks/crash_resend.py``).
    """
    configured = get_setting('OUTCOME_FLUSH_SIZE')
    if configured is None:
        return None
    return check_setting(configured, 'positive_int', 'SITEMESSAGE_OUTCOME_FLUSH_SIZE')


def is_sqlite(dispatch: Dispatch) -> bool:
    return db_connections[dispatch._state.db or 'default'].vendor == 'sqlite'


def write_sent(sent: List[Dispatch]) -> None:
    """Mark ``sent`` Sent in one query, before their batch is stored.

    The batch's store completes these rows later (texts, claim); should that never come (the
    process was killed), they are sent already and no later run sends them again.
    """
    if not sent:
        return
    try:
        Dispatch.objects.using(sent[0]._state.db or 'default').record_sent(sent)
    except Exception:  # the batch's store records them anyway
        LOGGER.warning('Could not record %s sent dispatches before the end of their batch', len(sent), exc_info=True)


def relax_commits(alias: str, relaxed: set) -> None:
    """On PostgreSQL, let this thread's connection commit records without waiting for the disk.

    Only this thread writes on that connection, and only these records: should the database server
    itself crash, the last few would be lost and those e-mails sent again (at least once, as
    before); a killed worker loses nothing it recorded. The wait for the disk is what each record
    cost the senders.
    """
    if alias in relaxed:
        return
    relaxed.add(alias)
    connection = db_connections[alias]
    if connection.vendor != 'postgresql':
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute('SET synchronous_commit TO OFF')
    except Exception:  # only slower: records still commit
        LOGGER.warning('Could not relax commits of sent records', exc_info=True)


class SentRecorder:
    """Gathers sent dispatches and records them every ``flush_size``, in the background or when asked.

    ``background``: dispatches are noted as they are marked sent (:meth:`observe`) and a thread
    of its own writes (started on first need, stopped by :meth:`close`); otherwise the caller
    hands over delivered units (:meth:`add`), which says when enough wait, and calls :meth:`write`.
    """

    def __init__(self, flush_size: int, background: bool, name: str):
        self.flush_size = flush_size
        self.background = background
        self._name = name
        self._pending: List[Dispatch] = []
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._closing = False

    def add(self, dispatches: Iterable[Dispatch]) -> bool:
        """Note the sent ones among a delivered unit's ``dispatches``; whether to :meth:`write` now."""
        sent = [dispatch for dispatch in dispatches if dispatch.dispatch_status == SENT]
        with self._changed:
            self._pending.extend(sent)
            return len(self._pending) >= self.flush_size

    def observe(self, dispatch: Dispatch) -> None:
        """Note one dispatch as it is marked sent (``Attempt.on_sent``); the background thread writes."""
        with self._changed:
            self._pending.append(dispatch)
            if len(self._pending) >= self.flush_size:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
                self._changed.notify()

    def write(self) -> None:
        """Record what is pending now, on the calling thread."""
        with self._changed:
            sent, self._pending = self._pending, []
        write_sent(sent)

    def forget(self, dispatches: Iterable[Dispatch]) -> None:
        """Drop ``dispatches`` (their batch is being stored: nothing of it is left to record early)."""
        stored = {id(dispatch) for dispatch in dispatches}
        with self._changed:
            self._pending = [dispatch for dispatch in self._pending if id(dispatch) not in stored]

    def close(self) -> None:
        """Stop the background thread (what it has not written yet, the batches' stores write)."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        relaxed: set = set()  # databases whose connection on this thread commits without waiting for the disk
        try:
            while True:
                with self._changed:
                    while len(self._pending) < self.flush_size and not self._closing:
                        self._changed.wait()
                    if self._closing:
                        return
                    sent, self._pending = self._pending, []
                if sent:
                    relax_commits(sent[0]._state.db or 'default', relaxed)
                write_sent(sent)
        finally:
            db_connections.close_all()  # only this thread's
