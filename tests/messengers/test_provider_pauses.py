"""A provider's pause is shared: a 429 (or a rate-limit code) seen by one worker stops the others.

Two messenger instances with the same credentials stand for two workers on two hosts: each keeps
its own per-process state, and the only thing they share is the cache named by
``SITEMESSAGE_RATE_LIMIT_CACHE`` (here the test settings' LocMemCache; tests/background has the
same with two real worker processes).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import caches
from django.utils import timezone

from sitemessage.delivery import ratelimit
from sitemessage.exceptions import MessengerException
from sitemessage.messengers import base_http, telegram
from sitemessage.messengers.base_http import RateLimited, RequestsMessengerBase
from sitemessage.messengers.facebook import FacebookMessenger
from sitemessage.messengers.telegram import TelegramMessenger
from sitemessage.messengers.twitter import TwitterMessenger
from sitemessage.messengers.vkontakte import VKontakteMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.http_api import Reply

pytestmark = pytest.mark.django_db

TG_TOKEN = '123456789:AAH-telegram_pause-token-never-shown'
TG_SEND = f'/bot{TG_TOKEN}/sendMessage'
X_SECRETS = ('x-key', 'x-secret', '1234-x-token', 'x-token-secret')


def tg_reply(request):
    return Reply(200, {'ok': True, 'result': {'message_id': 1, 'chat': {'id': request.json['chat_id']}}})


def tg_429(retry_after):
    body = {'ok': False, 'error_code': 429, 'description': f'Too Many Requests: retry after {retry_after}'}
    return Reply(429, {**body, 'parameters': {'retry_after': retry_after}})


# Each provider: (make the messenger, the posting route, a rate-limit reply, a success reply, an address).
PROVIDERS = {
    'telegram': (
        lambda url: TelegramMessenger(TG_TOKEN, api_url=url, timeout=5),
        ('POST', TG_SEND),
        tg_429(600),
        tg_reply,
        '42',
    ),
    'fb': (
        lambda url: FacebookMessenger('EAABpause0token', api_url=url, timeout=5),
        ('POST', '/v24.0/me/feed'),
        Reply(400, {'error': {'message': 'Application request limit reached', 'code': 4}}, {'Retry-After': '600'}),
        Reply(200, {'id': '1_2'}),
        '',
    ),
    'vk': (
        lambda url: VKontakteMessenger('vk1.a.pause0token', api_url=url, timeout=5),
        ('POST', '/method/wall.post'),
        Reply(200, {'error': {'error_code': 29, 'error_msg': 'Rate limit reached'}}),
        Reply(200, {'response': {'post_id': 7}}),
        '-1',
    ),
    'twitter': (
        lambda url: TwitterMessenger(*X_SECRETS, api_url=url, timeout=5),
        ('POST', '/2/tweets'),
        Reply(429, {'title': 'Too Many Requests', 'status': 429}, {'Retry-After': '600'}),
        Reply(201, {'data': {'id': '1', 'text': 'hi'}}),
        'ann',
    ),
}


@pytest.fixture
def provider_api(api_server):
    """The local API with every provider's warm-up and posting routes answering success."""
    api_server.routes[('POST', f'/bot{TG_TOKEN}/getMe')] = Reply(200, {'ok': True, 'result': {'id': 123456789}})
    api_server.routes[('GET', '/v24.0/me')] = Reply(200, {'id': '1', 'name': 'Page'})
    api_server.routes[('POST', '/method/users.get')] = Reply(200, {'response': [{'id': 1}]})
    for _make, route, _limited, ok, _address in PROVIDERS.values():
        api_server.routes[route] = ok
    return api_server


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(telegram, 'SLEEP', slept.append)
    monkeypatch.setattr(base_http, 'SLEEP', slept.append)
    return slept


def posts(server, route):
    return server.find(route[1], route[0])


@pytest.mark.parametrize('alias', PROVIDERS)
def test_a_rate_limit_seen_by_one_worker_stops_the_other(alias, provider_api, no_sleep):
    make, route, limited, ok, address = PROVIDERS[alias]
    first_host, second_host = make(provider_api.url), make(provider_api.url)
    provider_api.routes[route] = limited
    with pytest.raises(RateLimited):
        first_host.send_test_message(address, 'told to wait')
    assert len(posts(provider_api, route)) == 1

    provider_api.routes[route] = ok
    register_messenger_objects(second_host)
    schedule_messages('Hi', recipients(alias, address))
    schedule_messages('Again', recipients(alias, address))
    send_scheduled_messages()

    assert len(posts(provider_api, route)) == 1  # the second worker made no request
    assert no_sleep == []  # a long pause is not slept through
    dispatches = list(Dispatch.objects.all())
    assert all(d.dispatch_status != Dispatch.DISPATCH_STATUS_SENT for d in dispatches)
    if alias == 'telegram':  # Telegram puts the batch back untouched, as after its own 429
        assert [(d.dispatch_status, d.retry_count) for d in dispatches] == [(Dispatch.DISPATCH_STATUS_PENDING, 0)] * 2
    else:  # the others mark it with the wait
        wait = 9 if alias == 'vk' else 590  # VK's code 29 says no time: the default pause, 10 s
        assert all(d.next_attempt_at >= timezone.now() + timedelta(seconds=wait) for d in dispatches)
        assert all('rate-limited for' in e.error_log for e in DispatchError.objects.all())


@pytest.mark.parametrize('alias', PROVIDERS)
def test_the_pause_key_names_the_account_by_a_fingerprint_never_the_secret(alias, provider_api):
    make = PROVIDERS[alias][0]
    key = make(provider_api.url).pause_key()

    assert key.startswith(f'{alias}:') and len(key) == len(alias) + 17
    assert key == make(provider_api.url).pause_key()
    for secret in (TG_TOKEN, 'EAABpause0token', 'vk1.a.pause0token', *X_SECRETS):
        assert secret not in key


def test_another_bot_is_not_paused(provider_api, no_sleep):
    ratelimit.pause(TelegramMessenger(TG_TOKEN).pause_key(), 600)
    other_token = '987654321:AAH-another-bot'
    provider_api.routes[('POST', f'/bot{other_token}/getMe')] = Reply(200, {'ok': True, 'result': {'id': 9}})
    provider_api.routes[('POST', f'/bot{other_token}/sendMessage')] = tg_reply
    register_messenger_objects(TelegramMessenger(other_token, api_url=provider_api.url, timeout=5))
    schedule_messages('Hi', recipients('telegram', ['42']))

    send_scheduled_messages()

    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_SENT


def test_a_short_telegram_pause_is_waited_out_by_the_other_worker(provider_api, no_sleep):
    first_host = TelegramMessenger(TG_TOKEN, api_url=provider_api.url, timeout=5)
    provider_api.routes[('POST', TG_SEND)] = [tg_429(3), Reply(200, {'ok': True, 'result': {}})]
    first_host.send_test_message('42', 'waits 3 s, then goes')  # slept through, and retried once
    assert no_sleep == [3]

    provider_api.routes[('POST', TG_SEND)] = tg_reply
    register_messenger_objects(TelegramMessenger(TG_TOKEN, api_url=provider_api.url, timeout=5))
    schedule_messages('Hi', recipients('telegram', ['1', '2', '3']))
    send_scheduled_messages()

    assert no_sleep[0] == 3 and len(no_sleep) == 2 and 2 < no_sleep[1] <= 3  # once, for the whole unit
    assert [d.dispatch_status for d in Dispatch.objects.all()] == [Dispatch.DISPATCH_STATUS_SENT] * 3


def test_a_429_without_a_retry_time_pauses_for_the_default(provider_api):
    class PostBox(RequestsMessengerBase):
        alias, title = 'postbox', 'PostBox'

        def get_secrets(self):
            return ('postbox-token',)

        def _send_message(self, msg, to=None):
            return self.request('POST', f'{self.api_url}/send', json={'to': to, 'text': msg})

    provider_api.routes[('POST', '/send')] = Reply(429, 'slow down')
    messenger = PostBox(api_url=provider_api.url, timeout=5)
    with pytest.raises(RateLimited, match='PostBox: HTTP 429: slow down'):
        messenger.send_test_message('ann', 'Hi')

    assert 9 < ratelimit.paused_for(messenger.pause_key()) <= PostBox.pause_default == 10


def test_the_pause_is_read_once_per_unit_not_per_dispatch(provider_api, monkeypatch):
    messenger = TelegramMessenger(TG_TOKEN, api_url=provider_api.url, timeout=5)
    register_messenger_objects(messenger)
    reads = []
    original = ratelimit.paused_until
    monkeypatch.setattr(ratelimit, 'paused_until', lambda key: reads.append(key) or original(key))
    schedule_messages('Hi', recipients('telegram', [str(n) for n in range(1, 9)]))

    send_scheduled_messages()

    assert len(posts(provider_api, ('POST', TG_SEND))) == 8
    assert len(reads) == 2  # the warm-up's, and the unit's (one connection: the batch is one unit)


def test_facebook_transient_errors_pause_nobody(provider_api):
    messenger = FacebookMessenger('EAABpause0token', api_url=provider_api.url, timeout=5)
    provider_api.routes[('POST', '/v24.0/me/feed')] = Reply(500, {'error': {'message': 'Unknown', 'code': 1}})
    with pytest.raises(MessengerException) as caught:
        messenger.send_test_message('', 'Hi')

    assert not isinstance(caught.value, RateLimited)
    assert ratelimit.paused_for(messenger.pause_key()) == 0.0
    assert caches['default'].get(f'sitemessage:pause:{messenger.pause_key()}') is None
