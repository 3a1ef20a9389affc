"""EmailBackend delivers what Django's own SMTP backend delivers: side by side on the same server."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import MIMEPart
from email.mime.image import MIMEImage

import django
import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives, get_connection, send_mail
from django.core.mail.message import BadHeaderError
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from sitemessage.backends import EmailBackend
from sitemessage.messages.email import EmailMimeMessage
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages

pytestmark = pytest.mark.django_db

BACKEND = override_settings(EMAIL_BACKEND='sitemessage.backends.EmailBackend')
PNG = bytes.fromhex(
    '89504e470d0a1a0a0000000d4948445200000001000000010806000000'
    '1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082'
)
BINARY = bytes(range(256)) * 40


def plain():
    return EmailMessage('Welcome', 'Hello there,\nline two.\n', 'Site Robot <noreply@example.com>', ['ann@example.com'])


def with_headers():
    return EmailMessage(
        'Your order',
        'Order 42 is on its way.',
        '"Shop, Inc." <shop@example.com>',
        ['Ann <ann@example.com>'],
        cc=['bob@example.com'],
        bcc=['hidden@example.com'],
        reply_to=['Help Desk <help@example.com>'],
        headers={'Message-ID': '<order-42@shop.example.com>', 'X-Order': '42', 'X-Mailer-Note': 'side by side'},
    )


def with_attachments():
    message = EmailMessage('Отчёт за май', 'Документы во вложении.', 'Сайт <robot@example.com>', ['ann@example.com'])
    message.attach('notes.txt', 'first line\nsecond line\n', 'text/plain')
    message.attach('data.bin', BINARY, 'application/octet-stream')
    message.attach('отчёт №5.txt', 'содержимое', 'text/plain')
    return message


def with_inline_image_and_html():
    message = EmailMultiAlternatives(
        'Newsletter', 'Text version, as written.', 'news@example.com', ['ann@example.com', 'bob@example.com']
    )
    message.attach_alternative(
        '<html><body><p>HTML <b>as written</b></p><img src="cid:logo"></body></html>', 'text/html'
    )
    if django.VERSION >= (6, 1):  # MIMEBase parts and mixed_subtype are gone: a MIMEPart, as Django documents
        image = MIMEPart()
        image.set_content(PNG, maintype='image', subtype='png', disposition='inline', filename='logo.png', cid='<logo>')
    else:
        message.mixed_subtype = 'related'
        image = MIMEImage(PNG, 'png')
        image.add_header('Content-ID', '<logo>')
        image.add_header('Content-Disposition', 'inline', filename='logo.png')
    message.attach(image)
    return message


def password_reset():
    return EmailMultiAlternatives(
        'Password reset on example.com',
        'Hello <Mallory>,\nclick below.',
        'webmaster@example.com',
        ['mallory@example.com'],
    )


CASES = [plain, with_headers, with_attachments, with_inline_image_and_html, password_reset]


def anatomy(envelope, keep_message_id: bool):
    """What arrived, part by part: envelope, headers (boundaries, Date and generated Message-ID aside), payloads."""
    mail = message_from_bytes(envelope.content, policy=policy.compat32)
    dropped = {'date'} if keep_message_id else {'date', 'message-id'}
    parts = []
    for part in mail.walk():
        headers = [
            (name, re.sub(r'boundary="[^"]*"', 'boundary=B', value))
            for name, value in part.items()
            if name.lower() not in dropped
        ]
        payload = None if part.is_multipart() else part.get_payload(decode=True)
        parts.append((headers, part.get_filename(), payload))
    return envelope.mail_from, envelope.rcpt_tos, parts


def through_django(smtp_server, make):
    connection = get_connection(
        'django.core.mail.backends.smtp.EmailBackend', host='127.0.0.1', port=smtp_server.port, timeout=5
    )
    assert connection.send_messages([make()]) == 1
    [envelope] = smtp_server.handler.envelopes
    smtp_server.handler.envelopes.clear()
    return envelope


def through_queue(smtp_server, make):
    assert EmailBackend().send_messages([make()]) == 1
    assert smtp_server.handler.envelopes == []  # queued, not sent
    assert send_scheduled_messages().sent == 1
    [envelope] = smtp_server.handler.envelopes
    smtp_server.handler.envelopes.clear()
    return envelope


@pytest.mark.parametrize('make', CASES, ids=[case.__name__ for case in CASES])
def test_side_by_side_with_djangos_smtp_backend(smtp_server, smtp_messenger, make):
    django_envelope = through_django(smtp_server, make)
    ours = through_queue(smtp_server, make)

    keep_id = 'Message-ID' in make().extra_headers
    assert anatomy(ours, keep_id) == anatomy(django_envelope, keep_id)
    mail = message_from_bytes(ours.content, policy=policy.default)
    assert mail['Date'] and mail['Message-ID']
    assert 'Bcc' not in mail and b'hidden@example.com' not in ours.content


def test_what_arrives_is_what_the_caller_wrote(smtp_server, smtp_messenger):
    for make in (with_headers, with_attachments, with_inline_image_and_html):
        EmailBackend().send_messages([make()])
    send_scheduled_messages()

    order, report, news = [message_from_bytes(e.content, policy=policy.default) for e in smtp_server.handler.envelopes]
    assert smtp_server.handler.envelopes[0].mail_from == 'shop@example.com'  # not the messenger's robot@
    assert smtp_server.handler.envelopes[0].rcpt_tos == ['ann@example.com', 'bob@example.com', 'hidden@example.com']
    assert (order['From'], order['To'], order['Cc'], order['Reply-To']) == (
        '"Shop, Inc." <shop@example.com>',
        'Ann <ann@example.com>',
        'bob@example.com',
        'Help Desk <help@example.com>',
    )
    assert (order['Message-ID'], order['X-Order']) == ('<order-42@shop.example.com>', '42')
    assert str(report['From']) == 'Сайт <robot@example.com>' and str(report['Subject']) == 'Отчёт за май'
    attachments = {part.get_filename(): part.get_content() for part in report.iter_attachments()}
    for name in ('notes.txt', 'отчёт №5.txt'):  # text lines end in CRLF on the wire (Django 6 ends the last one too)
        attachments[name] = attachments[name].replace('\r\n', '\n')
    attachments['отчёт №5.txt'] = attachments['отчёт №5.txt'].rstrip('\n')
    assert attachments == {'notes.txt': 'first line\nsecond line\n', 'data.bin': BINARY, 'отчёт №5.txt': 'содержимое'}
    assert news.get_body(('plain',)).get_content().rstrip('\r\n') == 'Text version, as written.'
    assert news.get_body(('html',)).get_content().count('<html>') == 1
    [image] = [part for part in news.walk() if part.get_content_type() == 'image/png']
    assert (image['Content-ID'], image.get_content()) == ('<logo>', PNG)


def test_the_mime_is_stored_once_on_the_message(smtp_server, smtp_messenger):
    message = with_attachments()
    message.to = ['ann@example.com', 'bob@example.com', 'cy@example.com']
    EmailBackend().send_messages([message])

    [row] = Message.objects.all()
    [dispatch] = row.dispatch_set.all()
    assert (row.cls, dispatch.address) == ('email_django', 'ann@example.com')
    assert row.context['envelope_to'] == ['ann@example.com', 'bob@example.com', 'cy@example.com']
    assert len(EmailMimeMessage.get_mime(row.context)) > len(BINARY)
    send_scheduled_messages()
    dispatch.refresh_from_db()
    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_SENT
    assert len(dispatch.message_cache) < 100  # no second copy of the MIME
    [envelope] = smtp_server.handler.envelopes
    assert envelope.rcpt_tos == ['ann@example.com', 'bob@example.com', 'cy@example.com']


def test_ascii_and_8bit_mime_round_trip_through_the_database(smtp_server, smtp_messenger):
    EmailBackend().send_messages([plain(), with_attachments()])
    encodings = [m.context['mime_encoding'] for m in Message.objects.order_by('pk')]
    assert encodings == ['ascii', 'base64']
    send_scheduled_messages()
    assert len(smtp_server.handler.envelopes) == 2


def test_an_address_in_to_cc_and_bcc_gets_one_copy(smtp_server, smtp_messenger):
    message = EmailMessage(
        'Once',
        'text',
        'from@example.com',
        ['ann@example.com', 'ann@example.com'],
        cc=['ann@example.com'],
        bcc=['ann@example.com', 'bob@example.com'],
    )
    EmailBackend().send_messages([message])
    send_scheduled_messages()

    [envelope] = smtp_server.handler.envelopes
    assert envelope.rcpt_tos == ['ann@example.com', 'bob@example.com']


@BACKEND
def test_send_mail_to_10000_copies_of_one_address_sends_one_email(smtp_server, smtp_messenger):
    assert send_mail('Hi', 'text', 'from@example.com', ['ann@example.com'] * 10_000) == 1
    send_scheduled_messages()

    [envelope] = smtp_server.handler.envelopes
    assert envelope.rcpt_tos == ['ann@example.com']


def test_partial_refusal_is_sent_and_notes_the_refused(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'
    EmailBackend().send_messages(
        [EmailMessage('Hi', 'text', 'from@example.com', ['ann@example.com', 'gone@example.com'])]
    )
    send_scheduled_messages()

    dispatch = Dispatch.objects.get()
    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_SENT
    [envelope] = smtp_server.handler.envelopes
    assert envelope.rcpt_tos == ['ann@example.com']
    [note] = DispatchError.objects.filter(dispatch=dispatch).values_list('error_log', flat=True)
    assert 'gone@example.com: 550 No such user' in note


def test_all_refused_fails_the_dispatch_with_the_reason(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'
    EmailBackend().send_messages([EmailMessage('Hi', 'text', 'from@example.com', ['gone@example.com'])])
    report = send_scheduled_messages()

    assert report.failed == 1 and smtp_server.handler.envelopes == []
    [log] = DispatchError.objects.values_list('error_log', flat=True)
    assert 'gone@example.com: 550 No such user' in log


@BACKEND
def test_send_mail_counts_queued_messages_and_fail_silently_covers_queueing(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'
    # Queued: delivery has not happened yet, so a refused address still counts as queued.
    assert send_mail('Hi', 'text', 'from@example.com', ['gone@example.com'], fail_silently=False) == 1
    with pytest.raises(BadHeaderError, match=r"Subject .*'Hi\\nthere'"):
        send_mail('Hi\nthere', 'text', 'from@example.com', ['ann@example.com'])
    assert send_mail('Hi\nthere', 'text', 'from@example.com', ['ann@example.com'], fail_silently=True) == 0
    assert Message.objects.count() == 1
    send_scheduled_messages()
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_FAILED  # recorded later


@BACKEND
def test_several_messages_go_in_bulk_and_return_their_count(smtp_server, smtp_messenger):
    messages = [EmailMessage(f'Hi {i}', 'text', 'from@example.com', [f'u{i}@example.com']) for i in range(5)]
    messages.append(EmailMessage('No one', 'text', 'from@example.com', []))
    assert get_connection().send_messages(messages) == 5
    assert send_scheduled_messages().sent == 5
    assert sorted(e.rcpt_tos[0] for e in smtp_server.handler.envelopes) == [f'u{i}@example.com' for i in range(5)]


def _queries_to_queue(count, **kwargs):
    """Queue ``count`` e-mails in one send_messages() call; return (its result, its queries)."""
    messages = [
        EmailMessage(f'Hi {i}', f'text {i}', 'from@example.com', [f'u{i}@example.com', 'cc@example.com'])
        for i in range(count)
    ]
    with CaptureQueriesContext(connection) as context:
        queued = EmailBackend(**kwargs).send_messages(messages)
    return queued, len(context.captured_queries)


@pytest.fixture
def bulk_insert():
    # Asked inside the test: on MySQL/MariaDB the answer needs a database connection.
    if not connection.features.can_return_rows_from_bulk_insert:
        pytest.skip('SITEMESSAGE_TEST_DB: no ids from bulk inserts (MySQL), e-mails are queued one by one there')


@pytest.mark.parametrize(
    'settings',
    [
        {},  # one MIME message each, as Django built it
        {'SITEMESSAGE_SHORTCUT_EMAIL_MESSAGE_TYPE': 'email_html'},  # the 1.4.0 way: one dispatch per recipient
    ],
)
def test_queries_of_send_messages_do_not_grow_with_the_number_of_emails(bulk_insert, smtp_messenger, settings):
    with override_settings(**settings):
        two = _queries_to_queue(2)
        many = _queries_to_queue(30)

    assert (two[0], many[0]) == (2, 30)
    # SQLite may split the INSERT of 60 dispatches at its 999 parameters, and the first call asks
    # whether the suppression list holds anything (once a second): one statement either way, no more.
    assert abs(many[1] - two[1]) <= 1, f'30 e-mails took {many[1]} queries, 2 took {two[1]}'
    assert Message.objects.count() == 32
    dispatches = 2 * 32 if settings else 32
    assert Dispatch.objects.count() == dispatches


def test_bulk_queued_emails_are_all_delivered_as_written(bulk_insert, smtp_server, smtp_messenger):
    queued, _queries = _queries_to_queue(25, priority=4)

    assert queued == 25
    assert set(Message.objects.values_list('priority', flat=True)) == {4}
    assert send_scheduled_messages(priority=4).sent == 25
    got = sorted((m['Subject'], m.get_content().strip()) for m in smtp_server.handler.messages())
    assert got == sorted((f'Hi {i}', f'text {i}') for i in range(25))
    assert all(env.rcpt_tos[1] == 'cc@example.com' for env in smtp_server.handler.envelopes)


def test_bulk_queueing_skips_refused_emails_silently_and_counts_the_rest(smtp_messenger):
    messages = [EmailMessage(f'Hi {i}', 'text', 'from@example.com', [f'u{i}@example.com']) for i in range(4)]
    messages.insert(2, EmailMessage('Bad\nsubject', 'text', 'from@example.com', ['x@example.com']))
    messages.append(EmailMessage('No one', 'text', 'from@example.com', []))

    assert EmailBackend(fail_silently=True).send_messages(messages) == 4
    assert Message.objects.count() == 4
    with pytest.raises(BadHeaderError):
        EmailBackend().send_messages(messages)
    assert Message.objects.count() == 4  # a refused e-mail stores none of its batch


@override_settings(SITEMESSAGE_EMAIL_BACKEND_MESSAGES_PRIORITY=3)
def test_priority_comes_from_options_or_the_setting(smtp_messenger):
    EmailBackend().send_messages([plain()])
    EmailBackend(priority=9).send_messages([plain()])  # MAILERS OPTIONS on Django 6.1 arrive as kwargs
    assert list(Message.objects.order_by('pk').values_list('priority', flat=True)) == [3, 9]


def test_mime_type_is_not_offered_for_subscription():
    from sitemessage.toolbox import get_registered_message_type

    cls = get_registered_message_type('email_django')
    assert cls is EmailMimeMessage
    assert (cls.allow_user_subscription, cls.supported_messengers) == (False, ['smtp'])


def test_configured_as_djangos_mailers_setting_says(smtp_server, smtp_messenger):
    """Django 6.1 configures backends in MAILERS (OPTIONS become keyword arguments); older, EMAIL_BACKEND."""
    import django

    if django.VERSION >= (6, 1):
        mailers = {'default': {'BACKEND': 'sitemessage.backends.EmailBackend', 'OPTIONS': {'priority': 4}}}
        with override_settings(MAILERS=mailers):
            assert send_mail('Hi', 'text', 'from@example.com', ['ann@example.com']) == 1
    else:
        with override_settings(EMAIL_BACKEND='sitemessage.backends.EmailBackend'):
            assert get_connection(priority=4).send_messages([plain()]) == 1
    assert (Message.objects.get().cls, Message.objects.get().priority) == ('email_django', 4)
    assert send_scheduled_messages().sent == 1


def stdlib_compat32_mime():
    """The compat32 MIME classes Django before 6.0 builds on, with the awkward bits."""
    from email.header import Header
    from email.mime.application import MIMEApplication
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    mime = MIMEMultipart()
    mime['Subject'] = Header('Отчёт с длинной темой, которую придётся переносить на несколько строк', 'utf-8')
    mime['X-Long'] = 'A subject long enough to need folding at seventy-eight characters, surely'
    mime['X-Spaces'], mime['X-Empty'] = 'a  b\tc ', ''
    mime.attach(MIMEText('текст', 'plain', 'utf-8'))
    part = MIMEApplication(BINARY)
    part.add_header('Content-Disposition', 'attachment', filename=('utf-8', '', 'отчёт №5.bin'))
    mime.attach(part)
    return mime


def test_the_fast_writer_gives_the_bytes_of_compat32():
    from email.generator import BytesGenerator
    from io import BytesIO

    from sitemessage.backends import flatten

    mimes = [stdlib_compat32_mime()]
    if django.VERSION < (6, 0):  # Django 6 builds with the modern email API and does not use flatten()
        mimes += [make().message() for make in CASES]
    for mime in mimes:
        ours = flatten(mime)  # sets the boundaries, which the second writing reuses
        reference = BytesIO()  # what Django's as_bytes(linesep='\r\n') does, for both kinds of message
        BytesGenerator(reference, mangle_from_=False).flatten(mime, linesep='\r\n')
        assert ours == reference.getvalue()
