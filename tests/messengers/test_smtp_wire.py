"""What SMTPMessenger puts on the wire: international addresses, and the last gate against header injection.

Rows are queued as 1.4.0 or a raw insert could leave them (updated through the models, past any
check at scheduling time); assertions are on the bytes the aiosmtpd server received.
"""

from __future__ import annotations

import pytest

from sitemessage.headers import UnsafeHeaderValueError
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.messengers.smtp_wire import one_address_problem
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import register_messenger_objects
from tests.conftest import Mailbox
from tests.smtp_handlers import loopback_controller

pytestmark = pytest.mark.django_db

SENT = Dispatch.DISPATCH_STATUS_SENT
FAILED = Dispatch.DISPATCH_STATUS_FAILED


def errors_of(address):
    return list(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def use_server(server, from_email='robot@example.com', **options):
    messenger = SMTPMessenger(from_email, host='127.0.0.1', port=server.port, timeout=5, **options)
    register_messenger_objects(messenger)
    return messenger


def queue_raw(address, subject='Raw', body='Raw body\n'):
    """Queue an e-mail, then write ``address`` and ``subject`` into its rows as they are (no checks)."""
    schedule_email(body, 'placeholder@example.com', subject='placeholder')
    dispatch = Dispatch.objects.order_by('-pk').first()
    message = Message.objects.get(pk=dispatch.message_id)
    Message.objects.filter(pk=message.pk).update(context={**message.context, 'subject': subject})
    Dispatch.objects.filter(pk=dispatch.pk).update(address=address)
    return dispatch.pk


def good_batch(count=50):
    for number in range(count):
        schedule_email(f'Good {number}\n', f'good{number}@example.com', subject=f'Good {number}')
    return [f'good{number}@example.com' for number in range(count)]


def received(server):
    return b'\n'.join(envelope.original_content or envelope.content for envelope in server.handler.envelopes)


def start_server(smtputf8):
    controller = loopback_controller(Mailbox(), enable_SMTPUTF8=smtputf8)
    controller.start()
    return controller


@pytest.fixture
def utf8_server():
    """An aiosmtpd server offering SMTPUTF8 (RFC 6531) besides PIPELINING."""
    controller = start_server(smtputf8=True)
    yield controller
    controller.stop()


@pytest.fixture
def ascii_server():
    """An aiosmtpd server that does not offer SMTPUTF8."""
    controller = start_server(smtputf8=False)
    yield controller
    controller.stop()


# International addresses ----------------------------------------------------------------------------


def test_idn_domain_goes_as_punycode_in_envelope_and_header(smtp_server):
    use_server(smtp_server)
    schedule_email('Hallo\n', 'Jürgen Müller <leser@bücher.example>', subject='IDN')

    report = send_scheduled_messages()

    assert report.sent == 1
    [envelope] = smtp_server.handler.envelopes
    assert envelope.rcpt_tos == ['leser@xn--bcher-kva.example']
    assert 'SMTPUTF8' not in envelope.mail_options
    assert b'\nTo: =?utf-8?' in envelope.content and b'<leser@xn--bcher-kva.example>\r\n' in envelope.content
    [message] = smtp_server.handler.messages()
    assert str(message['To']) == 'Jürgen Müller <leser@xn--bcher-kva.example>'


def test_utf8_local_part_uses_smtputf8_when_offered(utf8_server):
    use_server(utf8_server)
    schedule_email('Grüße\n', 'jürgen@bücher.example', subject='Für Jürgen')

    report = send_scheduled_messages()

    assert report.sent == 1
    [envelope] = utf8_server.handler.envelopes
    assert envelope.rcpt_tos == ['jürgen@xn--bcher-kva.example']
    assert 'SMTPUTF8' in envelope.mail_options
    assert 'To: jürgen@xn--bcher-kva.example\r\n'.encode() in envelope.content
    [message] = utf8_server.handler.messages()
    assert message['Subject'] == 'Für Jürgen'


@pytest.mark.parametrize('connections', [1, 4])
def test_bad_international_addresses_fail_alone_in_a_batch_of_good_ones(ascii_server, connections):
    smtp_server = ascii_server
    use_server(smtp_server, connections=connections)
    good = good_batch(25)
    schedule_email('No SMTPUTF8\n', 'jürgen@example.com', subject='UTF-8 local part')
    schedule_email('Bad IDN\n', 'user@-bücher.example', subject='IDNA refuses it')
    good += [f'late{number}@example.com' for number in range(25)]
    for address in good[25:]:
        schedule_email('Good\n', address, subject='Good')

    report = send_scheduled_messages()

    assert (report.sent, report.failed, report.errors) == (50, 2, 0)
    assert sorted(rcpt for envelope in smtp_server.handler.envelopes for rcpt in envelope.rcpt_tos) == sorted(good)
    [no_utf8] = errors_of('jürgen@example.com')
    assert '`jürgen@example.com`' in no_utf8 and 'SMTPUTF8' in no_utf8
    [bad_idn] = errors_of('user@-bücher.example')
    assert '`user@-bücher.example`' in bad_idn and 'IDNAError' in bad_idn
    assert Dispatch.objects.get(address='user@-bücher.example').dispatch_status == FAILED


# The wire guard ----------------------------------------------------------------------------------------

HOSTILE = [  # (address, subject, what the reason names)
    ('victim1@example.com', 'Order\r\nReply-To : x@evil.test', 'Subject'),
    ('victim2@example.com', 'Hi\r\n\r\nINJECTED BODY', 'Subject'),
    ('victim3@example.com', 'Hi\nBcc: evil@attacker.test', 'Subject'),
    ('victim4@example.com', 'Nul\x00evil', 'Subject'),
    ('victim5@example.com, evil@attacker.test', 'Two addresses', 'names 2 addresses'),
    ('victim6@example.com\r\nBcc: evil@attacker.test', 'Address with a line break', 'recipient'),
    ('Victim <victim7@example.com>, Evil <evil@attacker.test>', 'Two named addresses', 'names 2 addresses'),
]


@pytest.mark.parametrize('connections', [1, 4])
def test_hostile_headers_never_reach_the_wire_and_the_batch_goes_on(smtp_server, connections):
    use_server(smtp_server, connections=connections)
    good = good_batch(25)
    hostile = [queue_raw(address, subject) for address, subject, _named in HOSTILE]
    good += [f'late{number}@example.com' for number in range(25)]
    for address in good[25:]:
        schedule_email('Good\n', address, subject='Good')

    report = send_scheduled_messages()

    assert (report.sent, report.failed) == (50, len(HOSTILE))
    assert sorted(rcpt for envelope in smtp_server.handler.envelopes for rcpt in envelope.rcpt_tos) == sorted(good)
    wire = received(smtp_server)
    for forbidden in (b'evil', b'attacker', b'INJECTED', b'Reply-To', b'\x00', b'victim'):
        assert forbidden not in wire
    for pk, (address, subject, named) in zip(hostile, HOSTILE):
        dispatch = Dispatch.objects.get(pk=pk)
        assert dispatch.dispatch_status == FAILED
        [reason] = dispatch.dispatcherror_set.values_list('error_log', flat=True)
        assert named in reason
        assert repr(subject) in reason or repr(address) in reason


def test_sender_with_a_line_break_fails_every_dispatch_naming_it(smtp_server):
    use_server(smtp_server, from_email='robot@example.com\r\nBcc: evil@attacker.test')
    schedule_email('Hello\n', ['a@example.com', 'b@example.com'], subject='Hi')

    report = send_scheduled_messages()

    assert report.failed == 2
    assert smtp_server.handler.envelopes == []
    for address in ('a@example.com', 'b@example.com'):
        [reason] = errors_of(address)
        assert "Sender (from_email) 'robot@example.com\\r\\nBcc: evil@attacker.test'" in reason


def test_sender_naming_two_addresses_is_refused(smtp_server):
    use_server(smtp_server, from_email='robot@example.com, evil@attacker.test')
    schedule_email('Hello\n', 'a@example.com', subject='Hi')

    report = send_scheduled_messages()

    assert report.failed == 1
    assert smtp_server.handler.envelopes == []
    assert 'names 2 addresses' in errors_of('a@example.com')[0]


@pytest.mark.parametrize('value', ['"0 <,@example.com>', '"Ann <a b@example.com>', '"x <y;z@example.com>'])
def test_what_parses_as_an_address_with_spaces_or_brackets_is_refused(smtp_server, value):
    """An unbalanced quote leaves the whole value to the address: never an envelope or a header."""
    use_server(smtp_server)
    problem = one_address_problem('recipient', value)
    assert repr(value) in problem and 'is not a valid address' in problem
    with pytest.raises(UnsafeHeaderValueError, match='Address'):
        schedule_email('Hello', value, subject='Hi')
    assert not Dispatch.objects.exists()


def test_test_message_to_a_hostile_address_is_refused_before_the_wire(smtp_server):
    from sitemessage.exceptions import PermanentDeliveryError
    from sitemessage.toolbox import send_test_message

    use_server(smtp_server)

    with pytest.raises(PermanentDeliveryError, match='names 2 addresses'):
        send_test_message('smtp', to='probe@example.com, evil@attacker.test')
    with pytest.raises(PermanentDeliveryError, match=r"'probe@example.com\\r\\nBcc: evil@attacker.test'"):
        send_test_message('smtp', to='probe@example.com\r\nBcc: evil@attacker.test')

    assert smtp_server.handler.envelopes == []


class FaultyMessenger(SMTPMessenger):
    """Fault injection: sending to one address raises what no SMTP library would (a bug of ours)."""

    def _send_one(self, dispatch, message_cls, recipient, data):
        if recipient.startswith('bööm@'):
            raise RuntimeError('injected fault')
        return super()._send_one(dispatch, message_cls, recipient, data)


@pytest.mark.parametrize('connections', [1, 4])
def test_an_unexpected_exception_is_that_dispatchs_outcome_and_the_batch_goes_on(utf8_server, connections):
    register_messenger_objects(
        FaultyMessenger(
            'robot@example.com', host='127.0.0.1', port=utf8_server.port, timeout=5, connections=connections
        )
    )
    good = good_batch(25)
    schedule_email('Boom\n', 'bööm@example.com', subject='Boom')
    good += [f'late{number}@example.com' for number in range(25)]
    for address in good[25:]:
        schedule_email('Good\n', address, subject='Good')

    report = send_scheduled_messages()

    assert (report.sent, report.errors) == (50, 1)
    assert sorted(rcpt for envelope in utf8_server.handler.envelopes for rcpt in envelope.rcpt_tos) == sorted(good)
    [reason] = errors_of('bööm@example.com')
    assert '`bööm@example.com`' in reason and 'RuntimeError: injected fault' in reason
