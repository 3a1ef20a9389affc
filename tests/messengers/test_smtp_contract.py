"""SMTPMessenger passes the messenger contract against a real aiosmtpd server that asks for a login."""

import base64
import logging
import traceback

import pytest

from sitemessage.exceptions import MessengerWarmupException
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages, send_test_message
from sitemessage.utils import register_messenger_objects
from tests.conftest import Mailbox
from tests.messengers.contract import MessengerContract
from tests.smtp_handlers import loopback_controller

LOGIN = 'robot'
PASSWORD = 'smtp-password-never-shown'

# The password as it goes over the wire too: AUTH PLAIN sends base64('\0login\0password'), AUTH LOGIN base64(password).
SECRETS = [
    PASSWORD,
    base64.b64encode(f'\0{LOGIN}\0{PASSWORD}'.encode()).decode(),
    base64.b64encode(PASSWORD.encode()).decode(),
]


class Credentials:
    """aiosmtpd authenticator: accepts LOGIN/PASSWORD unless ``refuse``; records what each AUTH sent."""

    def __init__(self):
        self.refuse = False
        self.seen = []  # (mechanism, login, password) of each AUTH command

    def __call__(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        login, password = (value.decode() if isinstance(value, bytes) else value for value in auth_data)
        self.seen.append((mechanism, login, password))
        # handled=False: aiosmtpd answers a refusal with its 535 (by default it expects us to have answered)
        return AuthResult(success=not self.refuse and (login, password) == (LOGIN, PASSWORD), handled=False)


@pytest.fixture(scope='module')
def auth_controller():
    credentials = Credentials()
    controller = loopback_controller(Mailbox(), authenticator=credentials, auth_require_tls=False)
    controller.credentials = credentials
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def auth_server(auth_controller):
    """The SMTP server offering AUTH (PLAIN, LOGIN) in plain text, emptied, accepting the credentials."""
    auth_controller.handler.envelopes.clear()
    auth_controller.handler.refuse.clear()
    auth_controller.credentials.refuse = False
    auth_controller.credentials.seen.clear()
    return auth_controller


def auth_messenger(server):
    return SMTPMessenger(
        'robot@example.com', login=LOGIN, password=PASSWORD, host='127.0.0.1', port=server.port, timeout=5
    )


class TestSMTPContract(MessengerContract):
    secrets = SECRETS

    @pytest.fixture(autouse=True)
    def _server(self, auth_server):
        self.server = auth_server

    def make_messenger(self):
        # Every session logs in, so the password really goes to the server.
        self.messenger = auth_messenger(self.server)
        return self.messenger

    def good_address(self, index):
        return f'user{index}@example.com'

    def received_texts(self):
        texts = []
        for message in self.server.handler.messages():
            part = message.get_body(('plain',))
            texts.append(part.get_content() if part is not None else '')
        return texts

    def break_warm_up(self):
        self.server.credentials.refuse = True  # the login is refused: 535

    def fail_permanently(self, address):
        self.server.handler.refuse[address] = '550 No such user here'

    def fail_temporarily(self, address):
        self.server.handler.refuse[address] = '450 Mailbox busy, try later'


# The password reaches the server, and no error text, exception or log line -----------------------------


def _assert_no_secret(text):
    for secret in SECRETS:
        assert secret not in text


@pytest.mark.django_db
def test_refused_login_records_the_failure_without_the_password(auth_server, caplog):
    register_messenger_objects(auth_messenger(auth_server))
    auth_server.credentials.refuse = True
    schedule_messages('Hello', recipients('smtp', ['a@example.com', 'b@example.com']))

    with caplog.at_level(logging.DEBUG, logger='sitemessage'):
        report = send_scheduled_messages()

    assert report.errors == 2
    assert auth_server.handler.envelopes == []
    # The check below means something only because the password was really sent (and refused).
    assert auth_server.credentials.seen and all(seen[1:] == (LOGIN, PASSWORD) for seen in auth_server.credentials.seen)
    errors = list(DispatchError.objects.values_list('error_log', flat=True))
    assert len(errors) == 2
    for error in errors:
        assert '535' in error and 'Authentication credentials invalid' in error
        _assert_no_secret(error)
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_ERROR}
    _assert_no_secret(caplog.text)


def test_refused_login_raises_to_the_caller_without_the_password(auth_server):
    register_messenger_objects(auth_messenger(auth_server))
    auth_server.credentials.refuse = True

    with pytest.raises(MessengerWarmupException) as raised:
        send_test_message('smtp', to='probe@example.com')

    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN), each with the password.
    assert {seen[0] for seen in auth_server.credentials.seen} == {'PLAIN', 'LOGIN'}
    assert all(seen[1:] == (LOGIN, PASSWORD) for seen in auth_server.credentials.seen)
    assert '535' in str(raised.value)
    # The whole chain as a traceback shows it, smtplib's own exception (the cause) included.
    _assert_no_secret(''.join(traceback.format_exception(raised.type, raised.value, raised.tb)))
    assert auth_server.handler.envelopes == []


def test_accepted_login_delivers(auth_server):
    register_messenger_objects(auth_messenger(auth_server))

    send_test_message('smtp', to='probe@example.com')

    assert [seen[1:] for seen in auth_server.credentials.seen] == [(LOGIN, PASSWORD)]  # accepted at once
    assert [envelope.rcpt_tos for envelope in auth_server.handler.envelopes] == [['probe@example.com']]
