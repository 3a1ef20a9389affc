"""Discovered at start-up: the SMTP messenger of the worker processes, pointed at the test's sink.

``SITEMESSAGE_PROCESS_SMTP_PORT`` is the sink's port on 127.0.0.1;
``SITEMESSAGE_PROCESS_SMTP_CONNECTIONS`` the number of parallel connections (default 1).
``SITEMESSAGE_PROCESS_TELEGRAM_URL`` adds a Telegram messenger speaking to a local imitation of
the Bot API there; each request carries ``X-Worker: <pid>``, so the imitation knows who asked.
"""

import os

from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.toolbox import register_messenger_objects

register_messenger_objects(
    SMTPMessenger(
        'robot@example.com',
        host='127.0.0.1',
        port=int(os.environ.get('SITEMESSAGE_PROCESS_SMTP_PORT', '25')),
        timeout=10,
        connections=int(os.environ.get('SITEMESSAGE_PROCESS_SMTP_CONNECTIONS', '1')),
    )
)

if os.environ.get('SITEMESSAGE_PROCESS_TELEGRAM_URL'):
    from sitemessage.messengers.telegram import TelegramMessenger

    class _WorkerTelegram(TelegramMessenger):
        def _new_session(self):
            session = super()._new_session()
            session.headers['X-Worker'] = str(os.getpid())
            return session

    register_messenger_objects(
        _WorkerTelegram(
            '123456789:AAH-process-token', api_url=os.environ['SITEMESSAGE_PROCESS_TELEGRAM_URL'], timeout=10
        )
    )
