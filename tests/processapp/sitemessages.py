"""Discovered at start-up: the SMTP messenger of the worker processes, pointed at the test's sink.

``SITEMESSAGE_PROCESS_SMTP_PORT`` is the sink's port on 127.0.0.1;
``SITEMESSAGE_PROCESS_SMTP_CONNECTIONS`` the number of parallel connections (default 1).
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
