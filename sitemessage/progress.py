"""Progress of a send run, printed as each batch is stored.

At verbosity 2 and more: one line per batch (logs and cron mails keep every line). At verbosity 1
on a terminal: one live line rewritten in place with ``\\r``; never on a pipe or a file, so cron
mails stay as they were.
"""

from __future__ import annotations

import time
from typing import Optional

from .delivery.run import SendReport


class Progress:
    """The ``progress`` callback of :func:`~sitemessage.delivery.run.send_scheduled_messages` for a command."""

    def __init__(self, stdout, verbosity: int = 1, live: Optional[bool] = None):
        self.stdout = stdout
        self.per_batch = verbosity >= 2
        # Django's OutputWrapper answers isatty() for the stream it wraps.
        self.live = (verbosity == 1 and stdout.isatty()) if live is None else live
        self.started = time.monotonic()
        self.shown_live = False

    def __call__(self, report: SendReport) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        done = report.sent + report.errors + report.failed
        counts = (
            f'sent {report.sent}, errors {report.errors}, failed {report.failed} so far, '
            f'{done / elapsed:.1f} dispatches/s'
        )
        if self.per_batch:
            self.stdout.write(f'Batch {report.batches}: {counts}')
        elif self.live:
            self.stdout.write(f'\r{counts}\x1b[K', ending='')
            self.stdout.flush()
            self.shown_live = True

    def done(self) -> None:
        """End the live line, so that what follows starts on a line of its own."""
        if self.shown_live:
            self.stdout.write('')
            self.shown_live = False
