"""Attachments on e-mails: stored once when scheduled, read when sent, delivered byte for byte (issue 12, item 6)."""

from __future__ import annotations

import io
import os
import tracemalloc
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import recipients, schedule_messages
from tests.smtp_handlers import RefusingHandler, loopback_controller

pytestmark = pytest.mark.django_db

BINARY = bytes(range(256)) * 64 + b'\r\n\x00\r\rend'  # every byte value, bare CRs, a NUL
TEXT = 'line one\nline two\r\nстрока три\n\n'  # mixed line ends must survive as they are


@pytest.fixture(autouse=True)
def storage(settings, tmp_path):
    """A storage of its own for each test (a folder under tmp_path)."""
    settings.STORAGES = {
        **settings.STORAGES,
        'default': {
            'BACKEND': 'django.core.files.storage.FileSystemStorage',
            'OPTIONS': {'location': str(tmp_path / 'media')},
        },
    }
    return storages['default']


def stored_files(root: Path) -> list:
    return sorted(str(path.relative_to(root)) for path in root.rglob('*') if path.is_file())


def attachments_of(mail) -> list:
    return [
        (part.get_filename(), part.get_content_type(), part.get_payload(decode=True))
        for part in mail.iter_attachments()
    ]


def test_attachments_arrive_byte_exact_in_every_accepted_form(smtp_messenger, smtp_server, storage, tmp_path):
    local = tmp_path / 'local data.bin'
    local.write_bytes(b'\x89PNG\r\n\x1a\n' + BINARY)
    storage.save('reports/existing.csv', ContentFile(b'a;b\r\n1;2\n'))
    with open(local, 'rb') as opened:
        schedule_email(
            'See the attachments.',
            'ann@example.com',
            'Monthly report',
            attachments=[
                ('report.bin', BINARY, 'application/octet-stream'),
                ('notes.txt', TEXT),  # str content: stored as UTF-8, type guessed from the name
                ('отчёт за март.pdf', b'%PDF-1.4\n\xe2\xe3\xcf\xd3\n'),  # a non-ASCII filename
                opened,  # a file object: its name
                'reports/existing.csv',  # a path in the storage: referenced, not copied
                local,  # a pathlib.Path: a local file
                ('buffer.dat', io.BytesIO(b'from a buffer\x00')),
            ],
        )

    send_scheduled_messages()

    [mail] = smtp_server.handler.messages()
    assert mail['Subject'] == 'Monthly report'
    assert mail.get_content_type() == 'multipart/mixed'
    assert mail.get_body(('plain',)).get_content() == 'See the attachments.'
    assert attachments_of(mail) == [
        ('report.bin', 'application/octet-stream', BINARY),
        ('notes.txt', 'text/plain', TEXT.encode('utf-8')),
        ('отчёт за март.pdf', 'application/pdf', b'%PDF-1.4\n\xe2\xe3\xcf\xd3\n'),
        ('local data.bin', 'application/octet-stream', local.read_bytes()),
        ('existing.csv', 'text/csv', b'a;b\r\n1;2\n'),
        ('local data.bin', 'application/octet-stream', local.read_bytes()),
        ('buffer.dat', 'application/octet-stream', b'from a buffer\x00'),
    ]


def test_an_html_email_keeps_its_alternative_before_the_attachments(smtp_messenger, smtp_server):
    schedule_messages(
        EmailHtmlMessage('Invoice', '<p>Your <b>invoice</b></p>', attachments=[('invoice.pdf', b'%PDF-1.7')]),
        recipients('smtp', 'ann@example.com'),
    )

    send_scheduled_messages()

    [mail] = smtp_server.handler.messages()
    assert [part.get_content_type() for part in mail.walk()] == [
        'multipart/mixed',
        'multipart/alternative',
        'text/plain',
        'text/html',
        'application/pdf',
    ]
    assert '<b>invoice</b>' in mail.get_body(('html',)).get_content()
    assert attachments_of(mail) == [('invoice.pdf', 'application/pdf', b'%PDF-1.7')]


def test_an_attachment_is_stored_once_for_every_recipient(smtp_messenger, smtp_server, tmp_path):
    schedule_email('Hi', ['a@example.com', 'b@example.com', 'c@example.com'], 'Hi', attachments=[('a.bin', BINARY)])

    [path] = stored_files(tmp_path / 'media')
    assert path.startswith('sitemessage/attachments/') and path.endswith('/a.bin')
    [message] = Message.objects.all()
    [reference] = message.context['_attachments']
    assert reference == {
        'filename': 'a.bin',
        'mimetype': 'application/octet-stream',
        'path': path,
        'size': len(BINARY),
        'owned': True,
    }

    send_scheduled_messages()

    mails = smtp_server.handler.messages()
    assert sorted(mail['To'] for mail in mails) == ['a@example.com', 'b@example.com', 'c@example.com']
    assert all(attachments_of(mail) == [('a.bin', 'application/octet-stream', BINARY)] for mail in mails)


def test_cleanup_deletes_the_files_stored_for_its_messages_not_the_projects(
    smtp_messenger, smtp_server, storage, tmp_path
):
    from sitemessage.toolbox import cleanup_sent_messages

    storage.save('exports/kept.csv', ContentFile(b'a,b'))
    schedule_email('Hi', 'ann@example.com', 'Hi', attachments=[('stored.bin', b'x'), 'exports/kept.csv'])
    schedule_email('Unsent', 'bob@example.com', 'Hi', attachments=[('unsent.bin', b'y')])
    Dispatch.objects.filter(address='bob@example.com').update(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)
    send_scheduled_messages()

    cleanup_sent_messages()

    assert Message.objects.count() == 1
    files = stored_files(tmp_path / 'media')
    assert 'exports/kept.csv' in files and len(files) == 2 and files[1].endswith('/unsent.bin')


def test_a_grouped_email_keeps_the_attachments_of_every_message_merged(smtp_messenger, smtp_server):
    from sitemessage.toolbox import register_message_types

    class DailyReports(EmailTextMessage):
        alias = 'daily_reports'
        group_mark = 'daily'

    register_message_types(DailyReports)
    schedule_messages(
        DailyReports('Orders', 'Orders', attachments=[('orders.csv', b'1')]), recipients('smtp', 'a@x.org')
    )
    schedule_messages(DailyReports('Stock', 'Stock', attachments=[('stock.csv', b'2')]), recipients('smtp', 'a@x.org'))

    send_scheduled_messages()

    [mail] = smtp_server.handler.messages()
    assert attachments_of(mail) == [('orders.csv', 'text/csv', b'1'), ('stock.csv', 'text/csv', b'2')]


def test_a_plain_email_without_attachments_is_unchanged(smtp_messenger, smtp_server):
    schedule_email('Just text', 'ann@example.com', 'Plain')

    send_scheduled_messages()

    [mail] = smtp_server.handler.messages()
    assert mail.get_content_type() == 'text/plain'
    assert '_attachments' not in Message.objects.get().context


@pytest.mark.parametrize(
    ('attachment', 'named'),
    [
        (42, 'Unsupported attachment 42 (a int)'),
        ('reports/missing.csv', "Attachment 'reports/missing.csv' does not exist in storage 'default'"),
        (Path('/nonexistent/file.pdf'), "Attachment file '/nonexistent/file.pdf' does not exist"),
        (('data.bin', 3.5), "Attachment 'data.bin': unsupported content of type float"),
        (('a\r\nBcc: x@example.com', b'x'), 'Attachment filename'),
        (('a.bin', b'x', 'not a type'), "Attachment 'a.bin': 'not a type' is not a MIME type"),
        (('', b'x'), 'the filename must be a non-empty string'),
        (io.BytesIO(b'no name'), 'has no name: give it as (filename, file)'),
    ],
)
def test_a_bad_attachment_is_refused_at_scheduling_naming_it(smtp_messenger, attachment, named, tmp_path):
    with pytest.raises(ValueError, match=None) as refused:
        schedule_email('Hi', 'ann@example.com', 'Hi', attachments=[('good.txt', b'fine'), attachment])

    assert named in str(refused.value)
    assert Message.objects.count() == 0
    assert stored_files(tmp_path / 'media') == []  # checked before anything is stored


def test_attachments_must_be_a_list(smtp_messenger):
    with pytest.raises(ValueError, match=r"`attachments` must be a list of attachments, got 'report.csv'"):
        EmailTextMessage('Hi', 'text', attachments='report.csv')


def test_an_attachment_gone_from_the_storage_fails_the_email_naming_it(smtp_messenger, smtp_server, storage):
    schedule_email('Hi', 'ann@example.com', 'Hi', attachments=[('gone.pdf', b'%PDF')])
    [reference] = Message.objects.get().context['_attachments']
    storage.delete(reference['path'])

    send_scheduled_messages()

    dispatch = Dispatch.objects.get()
    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    [error] = DispatchError.objects.values_list('error_log', flat=True)
    assert "Attachment 'gone.pdf' is missing from the storage" in error
    assert smtp_server.handler.envelopes == []


class DigestingHandler(RefusingHandler):
    """Keeps each e-mail's recipient and size, not the e-mail: the server thread holds no copies.

    (What arrives is checked byte for byte by the tests above; parsing here would only add the
    server's copies to the peak measured.)
    """

    def __init__(self):
        super().__init__()
        self.received = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append((envelope.rcpt_tos[0], len(envelope.content)))
        return '250 Message accepted for delivery'


@pytest.fixture
def digesting_server():
    controller = loopback_controller(DigestingHandler())
    controller.start()
    yield controller
    controller.stop()


def peak_sending(server, count: int, size: int, one_message: bool) -> int:
    """Schedule ``count`` e-mails with a ``size`` attachment; return the peak memory while sending them."""
    server.handler.received.clear()
    attachment = os.urandom(size)
    addresses = [f'user{i}@example.com' for i in range(count)]
    if one_message:
        schedule_email('See the attachment.', addresses, 'Report', attachments=[('report.bin', attachment)])
    else:
        for address in addresses:
            schedule_email('See the attachment.', address, 'Report', attachments=[('report.bin', attachment)])
    del attachment
    tracemalloc.start()
    try:
        report = send_scheduled_messages()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.sent == count
    assert sorted(address for address, _size in server.handler.received) == sorted(addresses)
    assert all(size * 4 / 3 < length < size * 1.5 for _address, length in server.handler.received)
    return peak


@pytest.mark.parametrize('one_message', [True, False], ids=['one e-mail to N', 'N e-mails'])
def test_a_batch_of_emails_with_a_large_attachment_does_not_hold_a_copy_per_email(digesting_server, one_message):
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import register_messenger_objects

    # tracemalloc slows everything down: a generous timeout
    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=digesting_server.port, timeout=120)
    )
    size = 1024 * 1024
    # Both in one batch (SITEMESSAGE_SEND_BATCH_SIZE 200), cut into units of several e-mails each, so
    # that both build the next e-mail while the last one is on the wire (pipelining).
    few = peak_sending(digesting_server, 8, size, one_message)
    many = peak_sending(digesting_server, 24, size, one_message)

    print(f'\n{size / 2**20:.0f} MB attachment, peak while sending 8: {few / 2**20:.1f} MB, 24: {many / 2**20:.1f} MB')
    # The peak is what one or two e-mails being built and sent hold (the attachment read, its base64
    # part, the wire bytes, and the server's buffers): sixteen more e-mails add nothing to it.
    assert many < few + size
    assert many < 16 * size
