"""A long-running delivery worker: sends whatever is due, sleeps while the queue is empty.

It wakes at once on PostgreSQL (LISTEN/NOTIFY) when a message is scheduled, polls elsewhere,
and stops cleanly on SIGTERM or SIGINT: the batch in hand is finished and stored (a batch is
bounded by ``SITEMESSAGE_SEND_BATCH_SIZE``); nothing stays claimed.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable, Optional

from .sending import SendReport, prepare_dispatches, send_scheduled_messages
from .settings import get_setting
from .wakeup import listen, wait_for_work

LOGGER = logging.getLogger(__name__)


class Worker:
    """Runs delivery passes until stopped; ``report`` is called with each non-empty pass' report."""

    def __init__(self, priority: Optional[int] = None, idle_seconds: Optional[float] = None,
                 max_passes: Optional[int] = None, report: Optional[Callable[[SendReport], None]] = None,
                 prepare: Optional[bool] = None):
        self.priority = priority
        # Create the dispatches of messages scheduled without recipients before each pass.
        self.prepare = bool(get_setting('WORKER_PREPARE_DISPATCHES') if prepare is None else prepare)
        self.idle_seconds = float(get_setting('WORKER_IDLE_SECONDS') if idle_seconds is None else idle_seconds)
        self.max_passes = max_passes
        self.report = report or (lambda pass_report: None)
        self.stop_event = threading.Event()
        self.totals = SendReport()

    def stop(self, *_args) -> None:
        """Ask the worker to stop after the batch in hand."""
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)

    def run(self) -> SendReport:
        """Deliver until stopped (or ``max_passes`` passes); return the totals."""
        notifications = listen()
        passes = 0
        while not self.stop_event.is_set():
            if self.prepare:
                prepare_dispatches(ignore_unknown_message_types=True)
            pass_report = send_scheduled_messages(priority=self.priority, should_stop=self.stop_event.is_set)
            passes += 1
            self._add(pass_report)
            if pass_report.batches:
                self.report(pass_report)
            if self.max_passes is not None and passes >= self.max_passes:
                break
            if not pass_report.batches:
                self._idle(notifications)
        return self.totals

    def _idle(self, notifications: bool) -> None:
        deadline = time.monotonic() + self.idle_seconds
        while not self.stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if notifications:
                # Short slices, so that a stop request is noticed within a second.
                if wait_for_work(min(left, 1.0)):
                    return
            else:
                self.stop_event.wait(min(left, 1.0))

    def _add(self, pass_report: SendReport) -> None:
        for name in ('sent', 'errors', 'failed', 'released', 'batches'):
            setattr(self.totals, name, getattr(self.totals, name) + getattr(pass_report, name))
        self.totals.seconds += pass_report.seconds
