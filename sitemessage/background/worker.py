"""A long-running delivery worker: sends whatever is due, sleeps while the queue is empty.

It wakes at once when a message is scheduled, through the channel ``SITEMESSAGE_WAKEUP`` names
(PostgreSQL LISTEN/NOTIFY, Redis pub/sub, a UNIX socket on this host), polls without one, and
stops cleanly on SIGTERM or SIGINT: the batch in hand is finished and stored (a batch is bounded
by ``SITEMESSAGE_SEND_BATCH_SIZE``); nothing stays claimed.

A lost database connection (a restart, a fail-over, a killed backend) does not end it: the
error is logged, the connection closed, and the pass retried after a capped exponential backoff.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable, Optional

from django.db import DEFAULT_DB_ALIAS

from ..dbretry import backoff_delay, close_connection, connection_errors
from ..delivery.run import SendReport, prepare_dispatches, send_scheduled_messages
from ..settings import get_setting
from .channels import Channel, Listener, get_channel

LOGGER = logging.getLogger('sitemessage.worker')  # the documented logger name


class Worker:
    """Runs delivery passes until stopped; ``report`` is called with each non-empty pass' report.

    ``reconnect_base`` and ``reconnect_max`` (seconds) shape the backoff after a lost database
    connection: 1 s, 2 s, 4 s... up to 60 s by default, jittered, for as long as it takes.
    """

    def __init__(
        self,
        priority: Optional[int] = None,
        idle_seconds: Optional[float] = None,
        max_passes: Optional[int] = None,
        report: Optional[Callable[[SendReport], None]] = None,
        prepare: Optional[bool] = None,
        reconnect_base: float = 1.0,
        reconnect_max: float = 60.0,
    ):
        self.priority = priority
        # Create the dispatches of messages scheduled without recipients before each pass.
        self.prepare = bool(get_setting('WORKER_PREPARE_DISPATCHES') if prepare is None else prepare)
        self.idle_seconds = float(get_setting('WORKER_IDLE_SECONDS') if idle_seconds is None else idle_seconds)
        self.max_passes = max_passes
        self.report = report or (lambda pass_report: None)
        self.reconnect_base = reconnect_base
        self.reconnect_max = reconnect_max
        self.stop_event = threading.Event()
        self.totals = SendReport()
        self.reconnects = 0  # database connections lost and retried so far
        self._listener: Optional[Listener] = None  # the wake-up channel's end, while running

    def stop(self, *_args) -> None:
        """Ask the worker to stop after the batch in hand."""
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

    def run(self) -> SendReport:
        """Deliver until stopped (or ``max_passes`` passes); return the totals."""
        channel = get_channel()  # a bad SITEMESSAGE_WAKEUP stops the worker before its first pass
        try:
            self._run(channel)
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
        return self.totals

    def _run(self, channel: Channel) -> None:
        errors = connection_errors()
        listening = False  # yet? (again after each reconnect: LISTEN belongs to the connection)
        passes = failures = 0
        while not self.stop_event.is_set():
            try:
                if not listening:
                    # Before the pass: what is scheduled after the pass' query wakes the idle wait.
                    if self._listener is not None:
                        self._listener.close()
                    self._listener = channel.listen(DEFAULT_DB_ALIAS)
                    listening = True
                if self.prepare:
                    prepare_dispatches(ignore_unknown_message_types=True)
                pass_report = send_scheduled_messages(priority=self.priority, should_stop=self.stop_event.is_set)
                if failures:
                    LOGGER.info('Database connection back after %s failed attempt(s).', failures)
                failures = 0
                passes += 1
                self._add(pass_report)
                if pass_report.batches:
                    self.report(pass_report)
                if self.max_passes is not None and passes >= self.max_passes:
                    break
                # Idle when nothing was attempted: also when every dispatch claimed went back untouched
                # (a provider's pause, a rate limit), or the next pass would take them again at once.
                if not (pass_report.sent or pass_report.errors or pass_report.failed):
                    self.idle(self._listener)
            except errors as error:
                failures += 1
                self.reconnects += 1
                listening = False  # a new connection listens afresh
                delay = backoff_delay(failures, self.reconnect_base, self.reconnect_max)
                LOGGER.warning(
                    'Database connection lost (%s: %s); reconnecting in %.1f s (attempt %s).',
                    type(error).__name__,
                    str(error).strip(),
                    delay,
                    failures,
                )
                close_connection()
                self.stop_event.wait(delay)

    def idle(self, listener: Optional[Listener]) -> None:
        """Wait after a pass that attempted nothing: until a wake-up, the idle time, or a stop request."""
        deadline = time.monotonic() + self.idle_seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if listener is not None:
                # Short slices, so that a stop request is noticed within a second.
                if listener.wait(min(left, 1.0)):
                    return
            else:
                self.stop_event.wait(min(left, 1.0))

    def _add(self, pass_report: SendReport) -> None:
        for name in ('sent', 'errors', 'failed', 'released', 'batches'):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(pass_report, name))
        self.totals.seconds += pass_report.seconds
