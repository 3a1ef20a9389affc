"""SMTPMessenger's TLS options against aiosmtpd with certificates made for the test (``openssl``).

The server's certificate is self-signed, so only ``ca_file`` (or an ``ssl_context``) makes it
trusted; the server requires a client certificate (``ssl.CERT_REQUIRED``), so delivery shows
that ``ssl_certfile``/``ssl_keyfile`` (or ``EMAIL_SSL_CERTFILE``/``EMAIL_SSL_KEYFILE``) were presented.
"""

from __future__ import annotations

import ssl

import pytest
from django.test.utils import override_settings

from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import register_messenger_objects
from tests.certificates import self_signed
from tests.conftest import Mailbox
from tests.smtp_handlers import loopback_controller

pytestmark = pytest.mark.django_db


class CertMailbox(Mailbox):
    """Records the subject of the client certificate each e-mail came with."""

    def __init__(self):
        super().__init__()
        self.client_certs = []

    async def handle_DATA(self, server, session, envelope):
        peer = server.transport.get_extra_info('peercert') or {}
        self.client_certs.append(dict(item for part in peer.get('subject', ()) for item in part).get('commonName'))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('smtp-tls')
    return {
        'server': self_signed(folder, 'server', '127.0.0.1', san='IP:127.0.0.1'),
        'client': self_signed(folder, 'client', 'sitemessage-client'),
    }


def server_context(certs):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certs['server'])
    context.verify_mode = ssl.CERT_REQUIRED  # a client without a certificate cannot even say EHLO
    context.load_verify_locations(certs['client'][0])
    return context


@pytest.fixture(params=['starttls', 'implicit'])
def tls_server(request, certs):
    """A server requiring a client certificate, by STARTTLS or by TLS from the first byte (SMTPS)."""
    if request.param == 'starttls':
        controller = loopback_controller(CertMailbox(), tls_context=server_context(certs), require_starttls=True)
    else:
        controller = loopback_controller(CertMailbox(), ssl_context=server_context(certs))
    controller.mode = request.param
    controller.start()
    yield controller
    controller.stop()


def messenger_for(server, **options):
    mode = {'use_tls': True} if server.mode == 'starttls' else {'use_ssl': True}
    messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', port=server.port, timeout=5, **mode, **options)
    register_messenger_objects(messenger)
    return messenger


def errors_of(address):
    return list(DispatchError.objects.filter(dispatch__address=address).values_list('error_log', flat=True))


def test_ca_file_and_client_certificate(tls_server, certs):
    cert, key = certs['client']
    messenger_for(tls_server, ca_file=certs['server'][0], ssl_certfile=cert, ssl_keyfile=key)
    schedule_email('Over TLS\n', 'to@example.com', subject='TLS')

    report = send_scheduled_messages()

    assert report.sent == 1
    assert tls_server.handler.client_certs == ['sitemessage-client']
    [envelope] = tls_server.handler.envelopes
    assert envelope.rcpt_tos == ['to@example.com']


def test_client_certificate_from_django_settings(tls_server, certs):
    cert, key = certs['client']
    with override_settings(EMAIL_SSL_CERTFILE=cert, EMAIL_SSL_KEYFILE=key):
        messenger_for(tls_server, ca_file=certs['server'][0])
        schedule_email('Over TLS\n', 'to@example.com', subject='TLS')
        report = send_scheduled_messages()

    assert report.sent == 1
    assert tls_server.handler.client_certs == ['sitemessage-client']


def test_ssl_context_is_used_as_given(tls_server, certs):
    context = ssl.create_default_context(cafile=certs['server'][0])
    context.load_cert_chain(*certs['client'])
    messenger_for(tls_server, ssl_context=context)
    schedule_email('Over TLS\n', 'to@example.com', subject='TLS')

    assert send_scheduled_messages().sent == 1
    assert tls_server.handler.client_certs == ['sitemessage-client']


def test_unverified_server_is_a_warm_up_error_naming_host_and_port(tls_server, certs):
    messenger_for(tls_server, ssl_certfile=certs['client'][0], ssl_keyfile=certs['client'][1])
    schedule_email('Over TLS\n', 'to@example.com', subject='TLS')

    report = send_scheduled_messages()

    assert report.errors == 1
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    [error] = errors_of('to@example.com')
    assert 'warm-up' in error and f'127.0.0.1:{tls_server.port}' in error
    assert 'CERTIFICATE_VERIFY_FAILED' in error
    assert tls_server.handler.envelopes == []


def test_no_client_certificate_is_refused_by_the_server(tls_server, certs):
    messenger_for(tls_server, ca_file=certs['server'][0])
    schedule_email('Over TLS\n', 'to@example.com', subject='TLS')

    report = send_scheduled_messages()

    assert report.errors == 1
    [error] = errors_of('to@example.com')
    assert 'warm-up' in error and f'127.0.0.1:{tls_server.port}' in error
    assert tls_server.handler.envelopes == []
