"""AppriseMessenger against a local HTTP endpoint Apprise speaks to (its ``json://`` notifier on loopback)."""

from __future__ import annotations

from typing import List

import pytest

from sitemessage.exceptions import MessengerException, SiteMessageConfigurationError
from sitemessage.messages.email import EmailTextMessage
from sitemessage.messengers.apprise import AppriseMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, register_messenger_objects, schedule_messages, send_scheduled_messages
from tests.fakes import refused_port
from tests.http_api import Reply
from tests.messengers.contract import MessengerContract

pytest.importorskip('apprise')

PASSWORD = 's3cr3t-pw'


def hook_url(api_server, path: str = 'hook0') -> str:
    port = api_server.url.rsplit(':', 1)[1]
    return f'json://bot:{PASSWORD}@127.0.0.1:{port}/{path}'


class TestAppriseContract(MessengerContract):
    secrets = [PASSWORD]

    @pytest.fixture(autouse=True)
    def _server(self, api_server):
        self.server = api_server
        self.refusing: set = set()
        for index in range(3):
            api_server.routes[('POST', f'/hook{index}')] = Reply(200, {'ok': True})

    def make_messenger(self):
        return AppriseMessenger()

    def good_address(self, index: int) -> str:
        return hook_url(self.server, f'hook{index}')

    def received_texts(self) -> List[str]:
        """What reached the peer and was accepted (a refused request was not received)."""
        return [r.json['message'] for r in self.server.requests if r.body and r.path not in self.refusing]

    def break_warm_up(self) -> None:
        pass  # no connection to open: each notification is its own request

    def refuse(self, address: str, reply: Reply) -> None:
        path = '/' + address.rsplit('/', 1)[1]
        self.refusing.add(path)
        self.server.routes[('POST', path)] = reply

    def fail_permanently(self, address: str) -> None:
        self.refuse(address, Reply(403, {'error': 'forbidden'}))

    def fail_temporarily(self, address: str) -> None:
        self.refuse(address, Reply(500, {'error': 'oops'}))

    def test_warm_up_failure_is_retried_later(self, messenger):
        # Apprise has nothing to warm up: connecting needs no network, even with no service reachable
        # (an unreachable service is a failed send, retried: see the tests below).
        assert messenger.before_send() is None
        messenger.after_send()


@pytest.fixture
def apprise_messenger(api_server):
    api_server.routes[('POST', '/hook0')] = Reply(200, {'ok': True})
    messenger = AppriseMessenger(urls={'ops': hook_url(api_server)})
    register_messenger_objects(messenger)
    return messenger


def only_dispatch() -> Dispatch:
    return Dispatch.objects.get()


@pytest.mark.django_db
def test_server_receives_title_and_body(apprise_messenger, api_server):
    schedule_messages(EmailTextMessage('Disk almost full', 'db1: 95% used <ok>'), recipients('apprise', 'ops'))
    send_scheduled_messages()

    [request] = api_server.find('/hook0', 'POST')
    assert request.json['title'] == 'Disk almost full'
    assert request.json['message'] == 'db1: 95% used <ok>'
    assert request.headers['Content-Type'] == 'application/json'
    assert only_dispatch().dispatch_status == Dispatch.DISPATCH_STATUS_SENT


@pytest.mark.django_db
def test_http_500_is_an_error_with_the_reason_and_is_retried(apprise_messenger, api_server):
    api_server.routes[('POST', '/hook0')] = Reply(500, {'error': 'down'})
    schedule_messages('alert', recipients('apprise', 'ops'))
    send_scheduled_messages()

    assert only_dispatch().dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    error = DispatchError.objects.get().error_log
    assert 'error=500' in error and 'json://bot:****@127.0.0.1' in error
    assert PASSWORD not in error


@pytest.mark.django_db
def test_unreachable_endpoint_is_an_error_with_the_reason(apprise_messenger):
    with refused_port() as port:
        apprise_messenger.urls['ops'] = f'json://bot:{PASSWORD}@127.0.0.1:{port}/hook'
        schedule_messages('alert', recipients('apprise', 'ops'))
        send_scheduled_messages()

    assert only_dispatch().dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    error = DispatchError.objects.get().error_log
    assert 'Connection error' in error and PASSWORD not in error


@pytest.mark.django_db
def test_retry_limit_turns_the_error_into_a_failure(apprise_messenger, api_server):
    api_server.routes[('POST', '/hook0')] = Reply(503, {'error': 'down'})
    EmailTextMessage.send_retry_limit, old = 1, EmailTextMessage.send_retry_limit
    try:
        schedule_messages(EmailTextMessage('s', 'alert'), recipients('apprise', 'ops'))
        send_scheduled_messages()
    finally:
        EmailTextMessage.send_retry_limit = old
    assert only_dispatch().dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert 'error=503' in DispatchError.objects.get().error_log


@pytest.mark.django_db
@pytest.mark.parametrize(
    ('address', 'reason'),
    [
        ('not-a-url-token-123', 'an address of 19 characters'),
        ('nosuchservice://token-123@host', "scheme 'nosuchservice'"),
    ],
)
def test_address_apprise_cannot_use_fails_at_once_without_echoing_it(apprise_messenger, address, reason):
    schedule_messages('alert', recipients('apprise', address))
    send_scheduled_messages()

    assert only_dispatch().dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    error = DispatchError.objects.get().error_log
    assert reason in error and 'token-123' not in error


def test_probe_reports_the_failure(api_server):
    api_server.routes[('POST', '/hook0')] = Reply(500, {'error': 'down'})
    with pytest.raises(MessengerException, match='error=500'):
        AppriseMessenger().send_test_message(hook_url(api_server), 'probe')


@pytest.mark.parametrize(
    ('kwargs', 'named'),
    [({'urls': ['json://x']}, "got ['json://x']"), ({'body_format': 'rtf'}, "got 'rtf'")],
)
def test_bad_configuration_is_named(kwargs, named):
    with pytest.raises(SiteMessageConfigurationError, match=named.replace('[', r'\[').replace(']', r'\]')):
        AppriseMessenger(**kwargs)


def test_missing_apprise_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'apprise', None)
    with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[apprise\]'):
        AppriseMessenger()


@pytest.mark.django_db
def test_probe_command_delivers(api_server):
    from io import StringIO

    from django.core.management import call_command

    api_server.routes[('POST', '/hook0')] = Reply(200, {'ok': True})
    register_messenger_objects(AppriseMessenger())
    call_command('sitemessage_probe', 'apprise', to=hook_url(api_server), stdout=StringIO())

    [request] = api_server.find('/hook0', 'POST')
    assert request.json['message'] == 'Test message from sitemessages.'


@pytest.mark.django_db
def test_docs_example(api_server):
    """docs/messengers/apprise.rst, with the ntfy and Discord URLs pointed at the local server."""
    from sitemessage.messengers.apprise import AppriseMessenger
    from sitemessage.toolbox import recipients, register_messenger_objects, schedule_messages

    api_server.routes[('POST', '/hook0')] = Reply(200, {'ok': True})
    api_server.routes[('POST', '/hook1')] = Reply(200, {'ok': True})
    register_messenger_objects(AppriseMessenger(urls={'ops': hook_url(api_server, 'hook0')}))

    schedule_messages('Disk almost full on db1', recipients('apprise', 'ops'))
    schedule_messages('Deploy done', recipients('apprise', hook_url(api_server, 'hook1')))
    send_scheduled_messages()

    assert [r.json['message'] for r in api_server.find('/hook0')] == ['Disk almost full on db1']
    assert [r.json['message'] for r in api_server.find('/hook1')] == ['Deploy done']
    assert Dispatch.objects.get(address='ops').dispatch_status == Dispatch.DISPATCH_STATUS_SENT


def test_loading_apprise_leaves_the_processs_email_charsets_as_they_were():
    """Apprise's e-mail plugin turns UTF-8 headers into quoted-printable process-wide; the messenger undoes it."""
    import email.charset

    before = dict(email.charset.CHARSETS)
    AppriseMessenger()
    assert email.charset.CHARSETS == before
    assert email.charset.Charset('utf-8').header_encoding == email.charset.SHORTEST  # not QP
