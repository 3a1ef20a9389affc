"""SMTP command pipelining (RFC 2920), the plain-message fast path, and connections kept across batches."""

from __future__ import annotations

import socket
import threading

import pytest
from django.test.utils import override_settings

from sitemessage.messengers.smtp import _POLICY, SMTPMessenger, plain_message_bytes
from sitemessage.models import Dispatch, DispatchError
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import register_messenger_objects
from tests.smtp_handlers import loopback_controller

pytestmark = pytest.mark.django_db

SENT = Dispatch.DISPATCH_STATUS_SENT
ERROR = Dispatch.DISPATCH_STATUS_ERROR
FAILED = Dispatch.DISPATCH_STATUS_FAILED


def status_of(address):
    return Dispatch.objects.get(address=address).dispatch_status


def errors_of(address):
    return list(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def use_server(smtp_server, **options):
    messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=smtp_server.port, timeout=5, **options)
    register_messenger_objects(messenger)
    return messenger


# The fast path writes what the MIME classes write --------------------------------------------------


@pytest.mark.parametrize(
    'to, subject, text, url',
    [
        ('a@example.com', 'Hello', 'Line one\nLine two\n', 'https://example.com/u/1/2/abc/'),
        ('Someone <a@example.com>', 'No trailing newline', 'one line', None),
        ('a@example.com', 'Mixed breaks', 'a\r\nb\rc\n\n.leading dot\n', ''),
        ('a@example.com', 'Empty', '', None),
    ],
)
def test_plain_fast_path_is_byte_for_byte_the_mime_output(to, subject, text, url):
    messenger = SMTPMessenger('Robot <robot@example.com>')
    date, message_id = 'Sat, 21 Nov 2026 12:00:00 +0000', '<1.2.3@example.com>'

    fast = plain_message_bytes('Robot <robot@example.com>', to, subject, date, message_id, text, url)
    mime = messenger._build_message(to, text, subject, None, url, date=date, message_id=message_id).as_bytes(
        policy=_POLICY
    )

    assert fast is not None
    assert fast == mime


@pytest.mark.parametrize(
    'to, subject, text',
    [
        ('a@example.com', 'Привет', 'text'),  # encoded subject
        ('Éva <eva@example.com>', 'Hi', 'text'),  # encoded display name
        ('a@example.com', 'Hi', 'Grüße'),  # UTF-8 body
        ('a@example.com', 'Hi', 'x' * 999),  # a line too long for 7bit
        ('a@example.com', 'Injected\nBcc: x@example.com', 'text'),  # a line break in a header
        ('a@example.com', 'S' * 1000, 'text'),  # a header that must be folded
    ],
)
def test_plain_fast_path_leaves_anything_needing_encoding_or_folding_to_the_mime_classes(to, subject, text):
    assert plain_message_bytes('robot@example.com', to, subject, 'd', '<m@example.com>', text, None) is None


def test_message_that_takes_the_slow_path_still_arrives_correctly(smtp_server):
    use_server(smtp_server)
    schedule_email('Schöne Grüße\n', 'eva@example.com', subject='Grüße')

    send_scheduled_messages()

    [message] = smtp_server.handler.messages()
    assert str(message['Subject']) == 'Grüße'
    assert message.get_content().replace('\r\n', '\n') == 'Schöne Grüße\n'


# Pipelining -----------------------------------------------------------------------------------------


class RecordingSMTPServer:
    """A minimal SMTP server on a raw socket that records each chunk it reads (one client at a time)."""

    def __init__(self, pipelining: bool):
        self.pipelining = pipelining
        self.chunks = []
        self._socket = socket.create_server(('127.0.0.1', 0))
        self.port = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        connection, _address = self._socket.accept()
        with connection:
            connection.sendall(b'220 recorder ESMTP\r\n')
            in_data = False
            buffer = b''
            while True:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                self.chunks.append(chunk)
                buffer += chunk
                while b'\r\n' in buffer:
                    line, buffer = buffer.split(b'\r\n', 1)
                    if in_data:
                        if line == b'.':
                            in_data = False
                            connection.sendall(b'250 queued\r\n')
                        continue
                    verb = line[:4].upper()
                    if verb == b'EHLO':
                        extensions = b'250-PIPELINING\r\n' if self.pipelining else b''
                        connection.sendall(b'250-recorder\r\n' + extensions + b'250 8BITMIME\r\n')
                    elif verb == b'DATA':
                        in_data = True
                        connection.sendall(b'354 go ahead\r\n')
                    elif verb == b'QUIT':
                        connection.sendall(b'221 bye\r\n')
                        return
                    else:
                        connection.sendall(b'250 ok\r\n')

    def close(self):
        self._socket.close()
        self._thread.join(5)


@pytest.mark.parametrize(
    'offered, wanted, expected_commands_in_one_write',
    [
        (True, True, True),
        (False, True, False),  # the server did not offer it
        (True, False, False),  # SMTPMessenger(pipelining=False)
    ],
)
def test_envelope_commands_go_out_in_one_write_only_when_offered_and_wanted(
    offered, wanted, expected_commands_in_one_write
):
    server = RecordingSMTPServer(pipelining=offered)
    try:
        messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=server.port, timeout=5, pipelining=wanted)
        register_messenger_objects(messenger)
        schedule_email('Hello', 'someone@example.com', subject='Hi')

        report = send_scheduled_messages()
    finally:
        server.close()

    assert report.sent == 1
    envelope = b'mail from:<robot@example.com>\r\nrcpt to:<someone@example.com>\r\ndata\r\n'
    assert any(chunk.lower() == envelope for chunk in server.chunks) is expected_commands_in_one_write
    commands = b''.join(server.chunks)
    assert commands.lower().count(b'mail from:<robot@example.com>') == 1
    assert b'Subject: Hi\r\n' in commands


@pytest.mark.parametrize('reply, status', [('550 5.1.1 No such user', FAILED), ('450 4.2.1 Try later', ERROR)])
def test_pipelined_refused_recipient_is_classified_and_the_connection_goes_on(smtp_server, reply, status):
    use_server(smtp_server)
    smtp_server.handler.refuse['refused@example.com'] = reply
    schedule_email('One', 'refused@example.com', subject='One')
    schedule_email('Two', 'fine@example.com', subject='Two')

    report = send_scheduled_messages()

    assert status_of('refused@example.com') == status
    assert reply.split()[0] in errors_of('refused@example.com')[0]
    assert status_of('fine@example.com') == SENT
    assert [envelope.rcpt_tos for envelope in smtp_server.handler.envelopes] == [['fine@example.com']]
    assert report.sent == 1


class ContentRefusingMailbox:
    """Refuses the content of messages to some recipients, and the sender of some messages."""

    def __init__(self):
        self.envelopes = []

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ['250-PIPELINING', responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address == 'blocked@example.com':
            return '553 5.7.1 Sender not allowed'
        envelope.mail_from = address
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        if 'spam@example.com' in envelope.rcpt_tos:
            return '554 5.7.1 Message looks like spam'
        self.envelopes.append(envelope)
        return '250 OK'


@pytest.fixture
def refusing_content_server():
    controller = loopback_controller(ContentRefusingMailbox())
    controller.start()
    yield controller
    controller.stop()


def test_pipelined_content_refusal_fails_that_dispatch_only(refusing_content_server):
    use_server(refusing_content_server)
    schedule_email('Buy now', 'spam@example.com', subject='Offer')
    schedule_email('Hello', 'friend@example.com', subject='Hi')

    send_scheduled_messages()

    assert status_of('spam@example.com') == FAILED
    assert '554' in errors_of('spam@example.com')[0]
    assert status_of('friend@example.com') == SENT
    assert len(refusing_content_server.handler.envelopes) == 1


def test_pipelined_sender_refusal_fails_with_the_reply(refusing_content_server):
    register_messenger_objects(
        SMTPMessenger('blocked@example.com', host='127.0.0.1', port=refusing_content_server.port, timeout=5)
    )
    schedule_email('Hello', 'friend@example.com', subject='Hi')

    send_scheduled_messages()

    assert status_of('friend@example.com') == FAILED
    assert '553' in errors_of('friend@example.com')[0]
    assert refusing_content_server.handler.envelopes == []


# One connection for a whole run ---------------------------------------------------------------------


@pytest.mark.parametrize('connections', [1, 3])
def test_connections_stay_open_from_batch_to_batch(smtp_server, connections):
    greetings = []
    handler = smtp_server.handler
    original = type(handler).handle_EHLO

    async def counting_ehlo(server, session, envelope, hostname, responses):
        greetings.append(hostname)
        return await original(handler, server, session, envelope, hostname, responses)

    handler.handle_EHLO = counting_ehlo
    try:
        use_server(smtp_server, connections=connections)
        for number in range(12):
            schedule_email(f'Message {number}', f'to{number}@example.com', subject=f'S{number}')
        with override_settings(SITEMESSAGE_SEND_BATCH_SIZE=2):
            report = send_scheduled_messages()
    finally:
        del handler.handle_EHLO

    assert (report.sent, report.batches) == (12, 6)
    assert len(handler.envelopes) == 12
    assert 1 <= len(greetings) <= connections  # not one session per batch


def test_pipelining_option_must_be_a_boolean():
    with pytest.raises(TypeError, match="pipelining must be True or False, got 'no'"):
        SMTPMessenger('robot@example.com', pipelining='no')


# A 503 (bad sequence of commands) answers the session's state, not the e-mail ---------------------------


class SequenceRefusingMailbox(ContentRefusingMailbox):
    """Answers MAIL with 503 for the first ``refusals`` transactions after each RSET-less start."""

    def __init__(self, refusals):
        super().__init__()
        self.refusals = refusals
        self.resets = 0

    async def handle_RSET(self, server, session, envelope):
        self.resets += 1
        return '250 OK'

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refusals:
            self.refusals -= 1
            return '503 5.5.1 Error: nested MAIL command'
        return await super().handle_MAIL(server, session, envelope, address, mail_options)


@pytest.mark.parametrize('refusals, status, delivered', [(1, SENT, 1), (100, ERROR, 0)])
def test_a_503_is_retried_once_after_rset_and_never_fails_the_email(refusals, status, delivered):
    handler = SequenceRefusingMailbox(refusals)
    controller = loopback_controller(handler)
    controller.start()
    try:
        use_server(controller)
        schedule_email('Hello', 'friend@example.com', subject='Hi')
        send_scheduled_messages()
    finally:
        controller.stop()

    assert status_of('friend@example.com') == status
    assert len(handler.envelopes) == delivered
    assert handler.resets >= 1  # the transaction was reset before the second try
    if status == ERROR:
        assert '503' in errors_of('friend@example.com')[0]
        assert Dispatch.objects.get(address='friend@example.com').retry_count == 1


def test_content_refusal_is_followed_by_rset_before_the_next_envelope(refusing_content_server):
    """What smtplib does: after a refused content, RSET (here the refusal is the batch's last e-mail)."""
    resets = []
    handler = refusing_content_server.handler

    async def handle_RSET(server, session, envelope):
        resets.append(True)
        return '250 OK'

    handler.handle_RSET = handle_RSET
    try:
        use_server(refusing_content_server)
        schedule_email('Hello', 'friend@example.com', subject='Hi')
        schedule_email('Buy now', 'spam@example.com', subject='Offer')
        send_scheduled_messages()
    finally:
        del handler.handle_RSET

    assert (status_of('friend@example.com'), status_of('spam@example.com')) == (SENT, FAILED)
    assert resets == [True]


def test_a_refused_recipient_is_not_sent_again(smtp_server):
    """aiosmtpd, like Exim, answers DATA with 503 after a refused RCPT: that 503 is no sequencing error."""
    rcpt_calls = []
    handler = smtp_server.handler
    original = type(handler).handle_RCPT

    async def counting_rcpt(server, session, envelope, address, rcpt_options):
        rcpt_calls.append(address)
        return await original(handler, server, session, envelope, address, rcpt_options)

    handler.handle_RCPT = counting_rcpt
    try:
        use_server(smtp_server)
        smtp_server.handler.refuse['gone@example.com'] = '550 5.1.1 No such user'
        schedule_email('Hello', 'gone@example.com', subject='Hi')
        send_scheduled_messages()
    finally:
        del handler.handle_RCPT

    assert status_of('gone@example.com') == FAILED
    assert rcpt_calls == ['gone@example.com']


# Servers without PIPELINING: sendmail, one command at a time ---------------------------------------------


def schedule_numbered(count):
    """``count`` e-mails, each its own recipient and text; return ``{address: text}``."""
    expected = {}
    for number in range(count):
        address, text = f'plain{number}@example.com', f'Plain message number {number}'
        schedule_email(text, address, subject=f'Plain {number}')
        expected[address] = text
    return expected


def received_texts(handler):
    """``{envelope recipient: [text of each e-mail received for it]}``."""
    received = {}
    for envelope, message in zip(handler.envelopes, handler.messages()):
        [rcpt] = envelope.rcpt_tos
        assert message['To'] == rcpt
        received.setdefault(rcpt, []).append(message.get_content().replace('\r\n', '\n').strip())
    return received


def assert_not_pipelined(handler):
    assert handler.rcpt_log
    assert [waiting for _peer, waiting in handler.rcpt_log if waiting] == []


def test_rcpt_log_sees_pipelined_commands_when_the_server_offers_pipelining(smtp_server):
    """The observation the tests below rely on: it does see pipelining when there is some."""
    use_server(smtp_server)
    schedule_numbered(3)

    send_scheduled_messages()

    assert len(smtp_server.handler.rcpt_log) == 3
    assert all(waiting.upper().startswith(b'DATA\r\n') for _peer, waiting in smtp_server.handler.rcpt_log)


@pytest.mark.parametrize('connections', [1, 4])
def test_without_pipelining_every_email_arrives_once_with_its_content(smtp_server, connections):
    smtp_server.handler.pipelining = False
    use_server(smtp_server, connections=connections)
    expected = schedule_numbered(12)

    report = send_scheduled_messages()

    assert report.sent == 12
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {SENT}
    assert received_texts(smtp_server.handler) == {address: [text] for address, text in expected.items()}
    assert all(envelope.mail_from == 'robot@example.com' for envelope in smtp_server.handler.envelopes)
    assert_not_pipelined(smtp_server.handler)
    peers = {peer for peer, _waiting in smtp_server.handler.rcpt_log}
    assert len(peers) == 1 if connections == 1 else 1 < len(peers) <= connections


@pytest.mark.parametrize('connections', [1, 4])
@pytest.mark.parametrize(
    'reply, status',
    [('550 5.1.1 No such user', FAILED), ('450 4.2.1 Mailbox busy', ERROR)],
    ids=['permanent', 'temporary'],
)
def test_without_pipelining_a_refused_recipient_fails_only_its_own_dispatch(smtp_server, connections, reply, status):
    smtp_server.handler.pipelining = False
    smtp_server.handler.refuse['plain3@example.com'] = reply
    use_server(smtp_server, connections=connections)
    expected = schedule_numbered(8)

    report = send_scheduled_messages()

    assert status_of('plain3@example.com') == status
    [error] = errors_of('plain3@example.com')
    assert reply in error and 'plain3@example.com' in error
    others = [address for address in expected if address != 'plain3@example.com']
    assert [status_of(address) for address in others] == [SENT] * 7
    assert DispatchError.objects.count() == 1
    assert report.sent == 7
    assert received_texts(smtp_server.handler) == {address: [expected[address]] for address in others}
    assert_not_pipelined(smtp_server.handler)
    assert len(smtp_server.handler.rcpt_log) == 8  # the refused recipient was tried once
