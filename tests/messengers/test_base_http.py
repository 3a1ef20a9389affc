"""RequestsMessengerBase owns the loop: a messenger of three hooks, against a local HTTP API (tests/http_api.py)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from sitemessage.exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
)
from sitemessage.messengers.base_http import DeferBatch, RequestsMessengerBase
from sitemessage.models import Dispatch
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.http_api import LocalAPIServer, Reply
from tests.messengers.test_telegram import error_texts, statuses

pytestmark = pytest.mark.django_db

TOKEN = 's3cr3t|token'  # '|' is percent-encoded in URLs: both forms must be scrubbed
SEND = f'/send/{TOKEN}'.replace('|', '%7C')


class SlowDown(DeferBatch):
    """The whole account must wait: the rest of the run goes back to the queue untouched."""

    requeue = True


class PostBox(RequestsMessengerBase):
    """A messenger written the documented way: build the payload, send it, read the service's errors."""

    alias = 'postbox'
    title = 'PostBox'

    def __init__(self, token, **kwargs):
        super().__init__(**kwargs)
        self.token = token

    def get_secrets(self):
        return (self.token,)

    def warm_up(self):
        self.request('GET', f'{self.api_url}/me', params={'token': self.token})

    def _build_message(self, to, text):
        if to == 'nobody':
            raise PermanentDeliveryError(f'{self.title}: no such box for token {self.token}')
        return {'to': to, 'text': text}

    def _send_message(self, msg, to=None):
        return self.request('POST', f'{self.api_url}/send/{self.token}', json=msg)

    def payload_error(self, response, payload):
        return payload.get('error') if isinstance(payload, dict) else None

    def map_payload_error(self, response, error):
        if error == 'account blocked':
            return DeferBatch(f'{self.title}: {error}', retry_after=60)
        if error == 'slow down':
            return SlowDown(f'{self.title}: {error}', retry_after=60)
        return PermanentDeliveryError(f'{self.title}: {error} ({response.url})')


@pytest.fixture
def server():
    server = LocalAPIServer(keep_alive=True).start()
    server.routes[('GET', '/me')] = Reply(200, {'ok': True})
    server.routes[('POST', SEND)] = Reply(200, {'ok': True})
    yield server
    server.stop()


@pytest.fixture
def postbox(server):
    messenger = PostBox(TOKEN, api_url=server.url, timeout=5)
    register_messenger_objects(messenger)
    return messenger


def wait_until(condition, seconds=3.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_three_hooks_make_a_messenger(server, postbox):
    schedule_messages('Hi', recipients('postbox', ['ann', 'bob']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 2
    assert [request.json for request in server.find(SEND)] == [{'to': 'ann', 'text': 'Hi'}, {'to': 'bob', 'text': 'Hi'}]


def test_a_run_uses_one_connection_and_closes_it(server, postbox):
    schedule_messages('Hi', recipients('postbox', ['ann', 'bob', 'cid']))
    send_scheduled_messages()

    clients = {request.client for request in server.requests}
    assert len(server.requests) == 4 and len(clients) == 1  # warm-up and three posts, one keep-alive connection
    assert wait_until(lambda: clients <= set(server.closed))  # closed with the run, not left to the garbage collector

    schedule_messages('Again', recipients('postbox', ['ann']))
    send_scheduled_messages()

    later = {request.client for request in server.requests} - clients
    assert len(later) == 1  # the next run opens a connection of its own
    assert wait_until(lambda: later <= set(server.closed))


def test_a_call_outside_a_run_closes_its_connection(server, postbox):
    assert postbox.request('GET', f'{server.url}/me') == {'ok': True}

    assert wait_until(lambda: server.requests[0].client in server.closed)


def test_a_test_message_closes_its_connection(server, postbox):
    postbox.send_test_message('ann', 'probe')

    assert len({request.client for request in server.requests}) == 1
    assert wait_until(lambda: server.requests[0].client in server.closed)


def test_a_failed_warm_up_closes_the_connection_and_names_no_secret(server, postbox):
    server.routes[('GET', '/me')] = Reply(401, {'error': f'token {TOKEN} revoked'})
    schedule_messages('Hi', recipients('postbox', ['ann']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR]
    assert 'Messenger warm-up failed' in error_texts()[0] and TOKEN not in error_texts()[0]
    assert server.find(SEND) == []
    assert wait_until(lambda: server.requests[0].client in server.closed)

    with pytest.raises(MessengerWarmupException) as caught:
        postbox.send_test_message('ann', 'probe')
    assert TOKEN not in str(caught.value) and '***' in str(caught.value)


def test_a_defer_batch_errors_the_rest_of_the_run_until_retry_after(server, postbox):
    server.routes[('POST', SEND)] = [Reply(200, {'error': 'account blocked'}), Reply(200, {'ok': True})]
    schedule_messages('First', recipients('postbox', ['ann', 'bob']))
    schedule_messages('Second', recipients('postbox', ['cid']))

    send_scheduled_messages()

    assert len(server.find(SEND)) == 1  # nothing more is attempted in this run
    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR] * 3
    for dispatch in Dispatch.objects.all():
        assert dispatch.retry_count == 1 and dispatch.next_attempt_at >= timezone.now() + timedelta(seconds=55)
    first, *rest = error_texts()
    assert first == 'PostBox: account blocked'
    assert rest == ['Not attempted: an earlier post in this run was refused: PostBox: account blocked'] * 2


def test_the_deferral_ends_with_the_run(server, postbox):
    server.routes[('POST', SEND)] = [Reply(200, {'error': 'account blocked'}), Reply(200, {'ok': True})]
    postbox.before_send()
    try:
        with pytest.raises(DeferBatch):
            postbox.send_test_message('ann', 'blocked')
    finally:
        postbox.after_send()
    schedule_messages('Later', recipients('postbox', ['bob']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT]


def test_a_requeueing_defer_batch_puts_the_rest_back_untouched(server, postbox):
    server.routes[('POST', SEND)] = [Reply(200, {'error': 'slow down'}), Reply(200, {'ok': True})]
    schedule_messages('Hi', recipients('postbox', ['ann', 'bob', 'cid']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR] + [Dispatch.DISPATCH_STATUS_PENDING] * 2
    assert list(Dispatch.objects.order_by('pk').values_list('retry_count', flat=True)) == [1, 0, 0]
    assert len(server.find(SEND)) == 1


def test_secrets_are_scrubbed_where_errors_are_recorded(server, postbox):
    server.routes[('POST', SEND)] = Reply(200, {'error': 'refused'})  # its text holds the URL, with the token
    schedule_messages('Hi', recipients('postbox', ['ann', 'nobody']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_FAILED] * 2
    texts = error_texts()
    assert texts[0].startswith('PostBox: refused (http://') and texts[1] == 'PostBox: no such box for token ***'
    assert all(TOKEN not in text and 's3cr3t%7Ctoken' not in text for text in texts)


def test_secrets_are_scrubbed_where_errors_leave_the_messenger(server, postbox):
    with pytest.raises(PermanentDeliveryError) as caught:
        postbox.send_test_message('nobody', 'probe')
    assert str(caught.value) == 'PostBox: no such box for token ***'

    server.routes[('POST', SEND)] = Reply(200, {'error': 'refused'})
    with pytest.raises(MessengerException) as caught:
        postbox.request('POST', f'{server.url}/send/{TOKEN}', json={})
    assert 's3cr3t' not in str(caught.value)


def test_a_bad_timeout_is_named(server, settings):
    settings.SITEMESSAGE_HTTP_TIMEOUT = '10'
    with pytest.raises(
        SiteMessageConfigurationError,
        match=r"SITEMESSAGE_HTTP_TIMEOUT must be a positive number of seconds or None, got '10'",
    ):
        PostBox(TOKEN, api_url=server.url).send_test_message('ann', 'probe')

    with pytest.raises(SiteMessageConfigurationError, match=r'PostBox\(timeout=...\) must be .* got -1'):
        PostBox(TOKEN, api_url=server.url, timeout=-1).send_test_message('ann', 'probe')
