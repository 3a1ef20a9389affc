"""A large e-mail to many recipients is held once, not once per recipient (issue 9, items 4 and 7)."""

from __future__ import annotations

import os
import tracemalloc

import pytest
from django.core.mail import EmailMessage

from sitemessage.backends import EmailBackend
from sitemessage.models import Message
from sitemessage.sending import send_scheduled_messages

pytestmark = pytest.mark.django_db


def test_peak_memory_of_a_5mb_email_to_40_recipients_is_a_few_copies_not_40(smtp_server):
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import register_messenger_objects

    # tracemalloc slows everything down: a generous timeout
    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=120))
    attachment = os.urandom(5 * 1024 * 1024)
    message = EmailMessage(
        'Report', 'See the attachment.', 'from@example.com', [f'user{i}@example.com' for i in range(40)]
    )
    message.attach('report.bin', attachment, 'application/octet-stream')
    EmailBackend().send_messages([message])
    size = len(Message.objects.get().context['mime'])
    del message

    tracemalloc.start()
    try:
        report = send_scheduled_messages()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    from sitemessage.models import DispatchError

    assert list(DispatchError.objects.values_list('error_log', flat=True)) == []
    [envelope] = smtp_server.handler.envelopes
    assert report.sent == 1 and len(envelope.rcpt_tos) == 40
    print(f'\nMIME {size / 2**20:.1f} MB, peak while sending (server thread included) {peak / 2**20:.1f} MB')
    assert peak < 10 * size  # one copy per recipient would be 40x
