"""SMTPMessenger passes the messenger contract against a real aiosmtpd server."""
import pytest

from sitemessage.messengers.smtp import SMTPMessenger
from tests.fakes import free_port
from tests.messengers.contract import MessengerContract


class TestSMTPContract(MessengerContract):

    secrets = ['smtp-password-never-shown']

    @pytest.fixture(autouse=True)
    def _server(self, smtp_server):
        self.server = smtp_server
        self.port = smtp_server.port

    def make_messenger(self):
        # No login against the local server; the password is still kept out of error texts.
        messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=self.port, timeout=5)
        messenger._options['password'] = self.secrets[0]
        self.messenger = messenger
        return messenger

    def good_address(self, index):
        return f'user{index}@example.com'

    def received_texts(self):
        texts = []
        for message in self.server.handler.messages():
            part = message.get_body(('plain',))
            texts.append(part.get_content() if part is not None else '')
        return texts

    def break_warm_up(self):
        self.messenger._options['port'] = free_port()  # nothing listens there

    def fail_permanently(self, address):
        self.server.handler.refuse[address] = '550 No such user here'

    def fail_temporarily(self, address):
        self.server.handler.refuse[address] = '450 Mailbox busy, try later'
