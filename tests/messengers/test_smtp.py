"""SMTPMessenger against a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import smtplib
from datetime import timedelta
from email.utils import parsedate_to_datetime

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from sitemessage.exceptions import MessengerWarmupException
from sitemessage.links import read_unsubscribe_token
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import recipients, register_messenger_objects, schedule_messages, send_test_message
from tests.conftest import Mailbox
from tests.fakes import refused_port
from tests.smtp_handlers import loopback_controller

pytestmark = pytest.mark.django_db

# A URLconf without the sitemessage views (used through ROOT_URLCONF='tests.messengers.test_smtp').
urlpatterns: list = []

SENT = Dispatch.DISPATCH_STATUS_SENT
ERROR = Dispatch.DISPATCH_STATUS_ERROR
FAILED = Dispatch.DISPATCH_STATUS_FAILED


def dispatch_of(address):
    return Dispatch.objects.get(address=address)


def errors_of(address):
    return list(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def content_of(part):
    """The decoded text of a MIME part, with the wire's CRLF line ends made plain newlines."""
    return part.get_content().replace('\r\n', '\n')


def message_to(smtp_server, address):
    [message] = [m for m in smtp_server.handler.messages() if m['To'] == address]
    return message


class CountingMailbox(Mailbox):
    """Also counts SMTP sessions (each one starts with EHLO or HELO)."""

    def __init__(self):
        super().__init__()
        self.greetings = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.greetings += 1
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):
        self.greetings += 1
        session.host_name = hostname
        return f'250 {server.hostname}'


@pytest.fixture(scope='module')
def counting_server():
    controller = loopback_controller(CountingMailbox())
    controller.start()
    yield controller
    controller.stop()


# Headers -----------------------------------------------------------------------------------------


def test_message_carries_date_message_id_from_to_and_non_ascii_subject(smtp_server, smtp_messenger):
    schedule_email('Hello there', 'to@example.com', subject='Привет, мир — naïve')
    before = timezone.now()

    report = send_scheduled_messages()

    assert report.sent == 1
    [envelope] = smtp_server.handler.envelopes
    assert envelope.mail_from == 'robot@example.com'
    assert envelope.rcpt_tos == ['to@example.com']
    assert b'=?utf-8?' in envelope.content  # the subject is encoded, not raw 8-bit
    [message] = smtp_server.handler.messages()
    assert message['From'] == 'robot@example.com'
    assert message['To'] == 'to@example.com'
    assert message['Subject'] == 'Привет, мир — naïve'
    assert abs(parsedate_to_datetime(message['Date']) - before) < timedelta(minutes=1)
    assert message['Message-ID'].startswith('<') and message['Message-ID'].endswith('@example.com>')
    assert message.get_content_type() == 'text/plain'
    assert content_of(message).strip() == 'Hello there'


def test_each_message_gets_its_own_message_id(smtp_server, smtp_messenger):
    schedule_email('Hello', ['a@example.com', 'b@example.com'], subject='S')

    send_scheduled_messages()

    ids = {m['Message-ID'] for m in smtp_server.handler.messages()}
    assert len(ids) == 2


@override_settings(SITEMESSAGE_SITE_URL='https://example.org')
def test_list_unsubscribe_headers_point_at_each_dispatch(smtp_server, smtp_messenger):
    schedule_email('Hello', ['a@example.com', 'b@example.com'], subject='S')

    send_scheduled_messages()

    for address in ('a@example.com', 'b@example.com'):
        dispatch = dispatch_of(address)
        message = message_to(smtp_server, address)
        header = message['List-Unsubscribe']
        prefix = f'<https://example.org/messages/unsubscribe/{dispatch.message_id}/{dispatch.pk}/'
        assert header.startswith(prefix) and header.endswith('/>')
        token = header[len(prefix) : -2]
        assert read_unsubscribe_token(dispatch.message_id, dispatch.pk, token).address == address
        # Explicit recipients hold no subscription: one click would unsubscribe nothing (issue 9).
        assert message['List-Unsubscribe-Post'] is None


@override_settings(ROOT_URLCONF='tests.messengers.test_smtp')
def test_no_list_unsubscribe_headers_without_sitemessage_urls(smtp_server, smtp_messenger):
    schedule_email('Hello', 'a@example.com', subject='S')

    send_scheduled_messages()

    [message] = smtp_server.handler.messages()
    assert message['List-Unsubscribe'] is None
    assert message['List-Unsubscribe-Post'] is None


def test_no_list_unsubscribe_headers_without_a_dispatch(smtp_server, smtp_messenger):
    send_test_message('smtp', to='probe@example.com')

    [message] = smtp_server.handler.messages()
    assert message['List-Unsubscribe'] is None
    assert message['List-Unsubscribe-Post'] is None


# Bodies ------------------------------------------------------------------------------------------


def test_plain_email_is_a_single_text_part(smtp_server, smtp_messenger):
    schedule_messages(
        EmailTextMessage('Plain', 'Line one\nLine two <b>not a tag</b>'), recipients('smtp', 'to@example.com')
    )

    send_scheduled_messages()

    [message] = smtp_server.handler.messages()
    assert not message.is_multipart()
    assert message.get_content_type() == 'text/plain'
    assert content_of(message).rstrip() == 'Line one\nLine two <b>not a tag</b>'


def test_html_email_is_multipart_alternative_with_a_readable_text_part(smtp_server, smtp_messenger):
    html = (
        '<html><head><style>p {color: red}</style></head><body>'
        '<p>First paragraph.</p><p>Line one<br>Line two</p>'
        '<p>See <a href="https://example.com/docs">the docs</a>.</p></body></html>'
    )
    schedule_messages(EmailHtmlMessage('Html', html), recipients('smtp', 'to@example.com'))

    send_scheduled_messages()

    [message] = smtp_server.handler.messages()
    assert message.get_content_type() == 'multipart/alternative'
    text_part, html_part = message.get_payload()
    assert text_part.get_content_type() == 'text/plain'
    assert html_part.get_content_type() == 'text/html'
    assert content_of(html_part).strip() == html
    text = content_of(text_part)
    assert 'First paragraph.\n\nLine one\nLine two' in text
    assert 'the docs (https://example.com/docs)' in text
    assert '<' not in text and 'color' not in text


def test_templated_html_email_has_text_part_without_markup(smtp_server, smtp_messenger):
    schedule_email({'contents': '<p>Dear <i>user</i>,</p><p>all good.</p>'}, 'to@example.com', subject='Report')

    send_scheduled_messages()

    [message] = smtp_server.handler.messages()
    text_part, html_part = message.get_payload()
    assert '<i>user</i>' in html_part.get_content()
    text = content_of(text_part)
    assert 'Dear user,\n\nall good.' in text
    assert '<' not in text


# Refusals and outages ----------------------------------------------------------------------------


def test_permanently_refused_recipient_fails_at_once_with_the_server_reply(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['bad@example.com'] = '550 No such user'
    schedule_email('Hello', ['bad@example.com', 'good@example.com'], subject='S')

    report = send_scheduled_messages()

    assert (report.sent, report.failed, report.errors) == (1, 1, 0)
    bad = dispatch_of('bad@example.com')
    assert bad.dispatch_status == FAILED
    [error] = errors_of('bad@example.com')
    assert '550' in error and 'No such user' in error
    assert dispatch_of('good@example.com').dispatch_status == SENT
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['good@example.com']]


def test_temporarily_refused_recipient_is_retried(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['busy@example.com'] = '450 Mailbox busy'
    schedule_email('Hello', 'busy@example.com', subject='S')

    report = send_scheduled_messages()

    assert report.errors == 1
    busy = dispatch_of('busy@example.com')
    assert (busy.dispatch_status, busy.retry_count) == (ERROR, 1)
    [error] = errors_of('busy@example.com')
    assert '450' in error and 'Mailbox busy' in error

    smtp_server.handler.refuse.clear()
    report = send_scheduled_messages()

    assert report.sent == 1
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['busy@example.com']]


def test_server_down_errors_all_with_a_warm_up_reason_and_nothing_is_lost(smtp_server, closed_port):
    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=closed_port, timeout=5))
    schedule_email('One', ['a@example.com', 'b@example.com'], subject='S')
    schedule_email('Two', 'c@example.com', subject='S')

    report = send_scheduled_messages()

    assert report.errors == 3
    for address in ('a@example.com', 'b@example.com', 'c@example.com'):
        assert dispatch_of(address).dispatch_status == ERROR
        [error] = errors_of(address)
        assert 'warm-up' in error and 'SMTP Error' in error

    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5))
    report = send_scheduled_messages()

    assert report.sent == 3
    assert sorted(env.rcpt_tos[0] for env in smtp_server.handler.envelopes) == [
        'a@example.com',
        'b@example.com',
        'c@example.com',
    ]


@pytest.mark.parametrize('address', ['not-an-address', 'a@example.com\nBcc: evil@example.com'])
def test_invalid_address_fails_naming_the_address(smtp_server, smtp_messenger, address):
    # Scheduling refuses a line break now (tests/test_header_safety.py): store the row as an older database holds it.
    message = Message.objects.create(
        cls='email_plain', context={'subject': 'S', 'type': 'plain', 'stext_': 'Hello'}, dispatches_ready=True
    )
    Dispatch.objects.create(message=message, messenger='smtp', address=address)

    report = send_scheduled_messages()

    assert report.failed == 1
    assert dispatch_of(address).dispatch_status == FAILED
    [error] = errors_of(address)
    assert f'`{address}`' in error
    assert smtp_server.handler.envelopes == []


def test_user_without_email_fails_with_a_reason(smtp_server, smtp_messenger, django_user_model):
    nobody = django_user_model.objects.create_user('nobody', email='', password='x')
    schedule_email('Hello', nobody, subject='S')

    send_scheduled_messages()

    dispatch = Dispatch.objects.get(recipient=nobody)
    assert (dispatch.address, dispatch.dispatch_status) == ('', FAILED)
    assert list(dispatch.dispatcherror_set.values_list('error_log', flat=True)) == [
        'The recipient has no e-mail address'
    ]
    assert smtp_server.handler.envelopes == []


# Configuration ---------------------------------------------------------------------------------


def test_explicit_arguments_beat_email_settings(smtp_server):
    with override_settings(
        EMAIL_HOST='192.0.2.1', EMAIL_PORT=2525, EMAIL_USE_TLS=True, DEFAULT_FROM_EMAIL='settings@example.com'
    ):
        register_messenger_objects(
            SMTPMessenger('explicit@example.com', host='127.0.0.1', port=smtp_server.port, use_tls=False, timeout=5)
        )
        schedule_email('Hello', 'to@example.com', subject='S')
        report = send_scheduled_messages()

    assert report.sent == 1
    [envelope] = smtp_server.handler.envelopes
    assert envelope.mail_from == 'explicit@example.com'


def test_explicit_use_ssl_false_beats_email_use_ssl(smtp_server):
    with override_settings(EMAIL_USE_SSL=True):
        messenger = SMTPMessenger(host='127.0.0.1', port=smtp_server.port, use_ssl=False, timeout=5)
        messenger.send_test_message('to@example.com', 'hello')

    assert len(smtp_server.handler.envelopes) == 1


def test_email_settings_are_used_when_arguments_are_not_given(smtp_server):
    messenger = SMTPMessenger()
    register_messenger_objects(messenger)
    with override_settings(
        EMAIL_HOST='127.0.0.1',
        EMAIL_PORT=smtp_server.port,
        EMAIL_USE_TLS=False,
        DEFAULT_FROM_EMAIL='settings@example.com',
    ):
        schedule_email('Hello', 'to@example.com', subject='S')
        report = send_scheduled_messages()

    assert report.sent == 1
    [envelope] = smtp_server.handler.envelopes
    assert envelope.mail_from == 'settings@example.com'
    assert smtp_server.handler.messages()[0]['From'] == 'settings@example.com'


def test_use_tls_and_use_ssl_together_are_rejected():
    with pytest.raises(ValueError, match='use_tls') as error:
        SMTPMessenger(use_tls=True, use_ssl=True)
    assert 'use_ssl' in str(error.value)

    with override_settings(EMAIL_USE_TLS=True, EMAIL_USE_SSL=True):
        with pytest.raises(ValueError, match='EMAIL_USE_TLS') as error:
            SMTPMessenger()
    assert 'EMAIL_USE_SSL' in str(error.value)


def test_use_tls_without_starttls_on_the_server_refuses_plain_text(smtp_server):
    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, use_tls=True, timeout=5)
    )
    schedule_email('Secret', 'to@example.com', subject='S')

    report = send_scheduled_messages()

    assert report.errors == 1
    [error] = errors_of('to@example.com')
    assert 'warm-up' in error and 'STARTTLS' in error
    assert smtp_server.handler.envelopes == []


# Test messages -----------------------------------------------------------------------------------


def test_send_test_message_reaches_the_server(smtp_server, smtp_messenger):
    result = send_test_message('smtp', to='probe@example.com')

    assert result == {}
    [message] = smtp_server.handler.messages()
    assert message['To'] == 'probe@example.com'
    assert 'Test message from sitemessages.' in message.get_body(('plain',)).get_content()


def test_send_test_message_errors_reach_the_caller(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['probe@example.com'] = '550 No such user'
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_test_message('smtp', to='probe@example.com')

    with refused_port() as port:
        register_messenger_objects(SMTPMessenger(host='127.0.0.1', port=port, timeout=5))
        with pytest.raises(MessengerWarmupException, match='SMTP Error'):
            send_test_message('smtp', to='probe@example.com')

    register_messenger_objects(SMTPMessenger(host='127.0.0.1', port=smtp_server.port, use_tls=True, timeout=5))
    with pytest.raises(MessengerWarmupException, match='STARTTLS'):
        send_test_message('smtp', to='probe@example.com')


# Connections -------------------------------------------------------------------------------------


def test_a_batch_is_sent_over_one_smtp_session(counting_server):
    handler = counting_server.handler
    handler.envelopes.clear()
    handler.greetings = 0
    register_messenger_objects(
        SMTPMessenger('robot@example.com', host='127.0.0.1', port=counting_server.port, timeout=5)
    )
    for number in range(5):
        schedule_email(f'Message {number}', f'to{number}@example.com', subject=f'S{number}')
    schedule_email('Shared', ['x@example.com', 'y@example.com', 'z@example.com'], subject='Shared')

    report = send_scheduled_messages()

    assert report.sent == 8
    assert len(handler.envelopes) == 8
    assert handler.greetings == 1

    schedule_email('Later', 'later@example.com', subject='Later')
    send_scheduled_messages()

    assert len(handler.envelopes) == 9
    assert handler.greetings == 2


def test_date_header_is_formatdate_of_the_current_second(monkeypatch):
    """The Date header is formatted once a second, never stale: a new second gives a new value."""
    from email.utils import formatdate, parsedate_to_datetime

    from sitemessage.messengers import smtp as smtp_module

    now = [1_800_000_000.25]
    monkeypatch.setattr(smtp_module.time, 'time', lambda: now[0])
    first = smtp_module.date_header()
    assert first == formatdate(1_800_000_000, localtime=True)
    now[0] += 0.5
    assert smtp_module.date_header() == first  # the same second
    now[0] += 1
    later = smtp_module.date_header()
    assert (parsedate_to_datetime(later) - parsedate_to_datetime(first)).total_seconds() == 1


# Configuration read in one place; the connection seam ----------------------------------------------


def test_connection_class_opens_every_connection_with_one_reading_of_the_settings(smtp_server):
    """Each connection is opened by ``connection_class`` with the settings as read when it opened."""
    opened = []

    class RecordingSMTP(smtplib.SMTP):
        def __init__(self, host, port, **kwargs):
            opened.append((host, port, kwargs))
            super().__init__(host, port, **kwargs)

    messenger = SMTPMessenger(
        'first@example.com', host='127.0.0.1', port=smtp_server.port, timeout=4, connection_class=RecordingSMTP
    )
    register_messenger_objects(messenger)
    schedule_email('One', 'a@example.com', subject='S')
    send_scheduled_messages()

    messenger.from_email = 'second@example.com'  # assignable as in 1.4.0: the next connection uses it
    schedule_email('Two', 'b@example.com', subject='S')
    send_scheduled_messages()

    assert opened == [('127.0.0.1', smtp_server.port, {'timeout': 4})] * 2
    assert [env.mail_from for env in smtp_server.handler.envelopes] == ['first@example.com', 'second@example.com']


def test_settings_names_each_value_by_the_rule_argument_then_setting_then_default(smtp_server):
    messenger = SMTPMessenger(host='mail.example.com', use_tls=False)
    with override_settings(
        EMAIL_HOST='settings.example.com',
        EMAIL_PORT=2525,
        EMAIL_HOST_USER='robot',
        DEFAULT_FROM_EMAIL='site@example.com',
        EMAIL_TIMEOUT=None,
        SITEMESSAGE_CONNECT_TIMEOUT=12,
    ):
        config = messenger.settings()
    assert (config.host, config.port, config.login, config.from_email) == (
        'mail.example.com',
        2525,
        'robot',
        'site@example.com',
    )
    assert (config.use_tls, config.use_ssl, config.timeout) == (False, False, 12)
    assert config.describe() == 'mail.example.com:2525' and 'robot' not in config.describe()


def test_a_failing_connection_class_is_a_warm_up_error_naming_the_server(smtp_server):
    def refuse(host, port, **kwargs):
        raise ConnectionRefusedError(111, 'Connection refused')

    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=2600, connection_class=refuse))
    schedule_email('One', 'a@example.com', subject='S')

    report = send_scheduled_messages()

    assert report.errors == 1
    [error] = DispatchError.objects.all()
    assert error.error_log.startswith('Messenger warm-up failed: SMTP Error: 127.0.0.1:2600:')
