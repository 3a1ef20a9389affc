"""The examples of docs/fallback.rst and of the attachments section of docs/messages.rst, run as written.

Telegram and XMPP stand in as FakeMessengers under their aliases (no such service runs here);
SMTP is the real messenger against the local server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from sitemessage.models import Dispatch
from sitemessage.sending import send_scheduled_messages
from tests.fakes import FakeMessenger

pytestmark = pytest.mark.django_db


class TelegramStandIn(FakeMessenger):
    alias = 'telegram'
    address_attr = 'username'


class JabberStandIn(FakeMessenger):
    alias = 'xmppsleek'
    address_attr = 'last_name'


@pytest.fixture
def stand_ins(smtp_messenger):
    from sitemessage.toolbox import register_messenger_objects

    telegram, jabber = TelegramStandIn(), JabberStandIn()
    register_messenger_objects(telegram, jabber)
    return telegram, jabber


def test_fallback_example_reaches_a_user_without_email_on_telegram(stand_ins, smtp_server, django_user_model):
    telegram, _jabber = stand_ins
    user = django_user_model.objects.create_user('ann_tg', email='')

    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import recipients, register_message_types, schedule_messages

    class PaymentDue(MessageBase):
        alias = 'payment_due'
        fallback_messengers = ('smtp', 'telegram', 'xmppsleek')

    register_message_types(PaymentDue)

    # Scheduled through the first messenger, as usual.
    [(message, _dispatches)] = schedule_messages(PaymentDue('Your invoice is due.'), recipients('smtp', user))
    send_scheduled_messages()

    failed = Dispatch.objects.get(message=message, messenger='smtp')
    assert failed.fallback_dispatch.messenger == 'telegram'
    assert failed.fallback_dispatch.fallback_of == failed
    assert telegram.delivered == [('ann_tg', 'Your invoice is due.')]
    assert smtp_server.handler.envelopes == []


def test_critical_example_goes_out_on_every_messenger(stand_ins, smtp_server, django_user_model):
    telegram, jabber = stand_ins
    ann = django_user_model.objects.create_user('ann_tg', email='ann@example.com', last_name='ann@xmpp.example.com')
    bob = django_user_model.objects.create_user('bob_tg', email='bob@example.com')

    from sitemessage.messages.base import MessageBase
    from sitemessage.toolbox import recipients, register_message_types, schedule_messages

    class ServerDown(MessageBase):
        alias = 'server_down'
        fallback_messengers = ('smtp', 'telegram', 'xmppsleek')
        send_on_all_messengers = True

    register_message_types(ServerDown)
    schedule_messages(ServerDown('db1 is down'), recipients('smtp', [ann, bob]))
    send_scheduled_messages()

    assert sorted(envelope.rcpt_tos[0] for envelope in smtp_server.handler.envelopes) == [
        'ann@example.com',
        'bob@example.com',
    ]
    assert telegram.delivered == [('ann_tg', 'db1 is down'), ('bob_tg', 'db1 is down')]
    assert jabber.delivered == [('ann@xmpp.example.com', 'db1 is down')]


def test_attachments_example_sends_every_form(smtp_messenger, smtp_server, settings, tmp_path, user):
    settings.STORAGES = {
        **settings.STORAGES,
        'default': {'BACKEND': 'django.core.files.storage.FileSystemStorage', 'OPTIONS': {'location': str(tmp_path)}},
    }
    storages['default'].save('exports/2026-11.csv', ContentFile(b'month,total\n11,42\n'))
    exports = tmp_path / 'srv' / 'exports'
    exports.mkdir(parents=True)
    (exports / 'orders.csv').write_bytes(b'id\n1\n')
    (exports / 'summary.xlsx').write_bytes(b'PK\x03\x04')
    pdf_bytes = b'%PDF-1.7\n'
    srv = str(tmp_path / 'srv')  # stands for the docs' /srv

    from sitemessage.messages.email import EmailHtmlMessage
    from sitemessage.shortcuts import schedule_email
    from sitemessage.toolbox import recipients, schedule_messages

    with open(f'{srv}/exports/orders.csv', 'rb') as orders:
        schedule_email(
            'The report you asked for.',
            ['ann@example.com', 'bob@example.com'],
            'Monthly report',
            attachments=[
                ('report.pdf', pdf_bytes, 'application/pdf'),  # (filename, content[, mimetype])
                ('notes.txt', 'Text is stored as UTF-8'),  # the type is guessed from the name
                orders,  # an open file: its own name (read here: it can be closed afterwards)
                Path(f'{srv}/exports/summary.xlsx'),  # a local file
                'exports/2026-11.csv',  # a path that exists in the attachment storage
            ],
        )

    schedule_messages(
        EmailHtmlMessage('Invoice', '<p>Your invoice</p>', attachments=[('invoice.pdf', pdf_bytes)]),
        recipients('smtp', user),
    )
    send_scheduled_messages()

    names = {
        mail['To']: [part.get_filename() for part in mail.iter_attachments()] for mail in smtp_server.handler.messages()
    }
    assert names == {
        'ann@example.com': ['report.pdf', 'notes.txt', 'orders.csv', 'summary.xlsx', '2026-11.csv'],
        'bob@example.com': ['report.pdf', 'notes.txt', 'orders.csv', 'summary.xlsx', '2026-11.csv'],
        'user1@example.com': ['invoice.pdf'],
    }
