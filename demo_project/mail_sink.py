#!/usr/bin/env python
"""A local SMTP server for the demo: accepts every e-mail and appends it to outbox.jsonl.

Run by ``make demo``; port from ``DEMO_SMTP_PORT`` (2525), stops on Ctrl-C or SIGTERM.
"""

import os
import signal
import sys
import threading
from pathlib import Path

from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import outbox  # noqa: E402 (plain module, no Django needed)

OUTBOX = Path(__file__).resolve().parent / 'outbox.jsonl'


class OutboxHandler:
    async def handle_DATA(self, server, session, envelope):
        outbox.append(
            OUTBOX,
            {
                'transport': 'smtp',
                'peer': str(session.peer),
                'mail_from': envelope.mail_from,
                'rcpt_tos': list(envelope.rcpt_tos),
                'data': envelope.original_content.decode('utf-8', errors='replace'),
            },
        )
        print(f'[mail sink] {envelope.mail_from} -> {", ".join(envelope.rcpt_tos)}', flush=True)
        return '250 Message accepted for delivery'


def main():
    port = int(os.environ.get('DEMO_SMTP_PORT', '2525'))
    controller = Controller(OutboxHandler(), hostname='127.0.0.1', port=port)
    controller.start()
    print(f'[mail sink] SMTP server on 127.0.0.1:{port}, storing mails in {OUTBOX}', flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_args: stop.set())
    stop.wait()
    controller.stop()


if __name__ == '__main__':
    main()
