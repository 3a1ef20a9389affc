"""TelegramMessenger against a local imitation of the Telegram Bot API (tests/http_api.py).

The imitation answers as https://core.telegram.org/bots/api documents: ``{"ok": true, "result": ...}``
or ``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``.
"""

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sitemessage.exceptions import MessengerException, MessengerWarmupException, SiteMessageConfigurationError
from sitemessage.messengers import telegram
from sitemessage.messengers.telegram import TelegramMessenger, TelegramMessengerException, split_text, utf16_length
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.fakes import free_port
from tests.http_api import Reply
from tests.messengers.contract import MessengerContract

TOKEN = '123456789:AAH-telegram_test-token-never-shown'
BOT = f'/bot{TOKEN}'
BOT_USER = {'id': 123456789, 'is_bot': True, 'first_name': 'Site', 'username': 'site_bot'}


def failure(code, description, **parameters):
    body = {'ok': False, 'error_code': code, 'description': description}
    if parameters:
        body['parameters'] = parameters
    return Reply(code, body)


BLOCKED = failure(403, 'Forbidden: bot was blocked by the user')
CHAT_NOT_FOUND = failure(400, 'Bad Request: chat not found')
SERVER_ERROR = failure(500, 'Internal Server Error')


class BotAPI:
    """The Bot API on the local server: ``getMe`` and ``sendMessage``; per-chat scripted replies.

    ``chat_replies[chat_id]`` is a list of replies served in turn to sendMessage for that chat;
    ``None`` in it (or an exhausted list) means "deliver normally".
    """

    def __init__(self, server):
        self.server = server
        self.delivered = []
        self.chat_replies = {}
        server.routes[('POST', f'{BOT}/getMe')] = Reply(200, {'ok': True, 'result': BOT_USER})
        server.routes[('POST', f'{BOT}/sendMessage')] = self._send_message

    def _send_message(self, request):
        body = request.json
        script = self.chat_replies.get(str(body['chat_id']))
        reply = script.pop(0) if script else None
        if reply is not None:
            return reply
        self.delivered.append(body)
        result = {
            'message_id': len(self.delivered),
            'date': 1700000000,
            'text': body['text'],
            'chat': {'id': body['chat_id'], 'type': 'private'},
        }
        return Reply(200, {'ok': True, 'result': result})

    def script(self, chat_id, *replies):
        self.chat_replies[str(chat_id)] = list(replies)

    def sends(self):
        return [request.json for request in self.server.find(f'{BOT}/sendMessage')]


@pytest.fixture
def bot(api_server):
    return BotAPI(api_server)


@pytest.fixture
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(telegram, 'SLEEP', slept.append)
    return slept


def make_messenger(api_server, **kwargs):
    kwargs.setdefault('timeout', 5)
    kwargs.setdefault('api_url', api_server.url)
    messenger = TelegramMessenger(TOKEN, **kwargs)
    register_messenger_objects(messenger)
    return messenger


def statuses():
    return list(Dispatch.objects.order_by('pk').values_list('dispatch_status', flat=True))


def error_texts():
    return list(DispatchError.objects.order_by('pk').values_list('error_log', flat=True))


# The contract ------------------------------------------------------------------------------------


class TestTelegramContract(MessengerContract):
    secrets = [TOKEN]

    @pytest.fixture(autouse=True)
    def _server(self, api_server, no_sleep):
        self.server = api_server
        self.bot = BotAPI(api_server)

    def make_messenger(self):
        return TelegramMessenger(TOKEN, api_url=self.server.url, timeout=5)

    def good_address(self, index):
        return str(1000 + index)

    def received_texts(self):
        return [body['text'] for body in self.bot.delivered]

    def break_warm_up(self):
        self.server.routes[('POST', f'{BOT}/getMe')] = failure(401, 'Unauthorized')

    def fail_permanently(self, address):
        self.bot.script(address, *[BLOCKED] * 10)

    def fail_temporarily(self, address):
        self.bot.script(address, *[SERVER_ERROR] * 10)


# Requests on the wire ----------------------------------------------------------------------------

pytestmark = pytest.mark.django_db


def test_each_dispatch_is_a_json_send_message_with_only_chat_id_and_text_by_default(api_server, bot):
    make_messenger(api_server)
    schedule_messages('Hi there!', recipients('telegram', ['12345678', '@mychannel', '-1001234567890']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 3
    assert [(r.method, r.path) for r in api_server.requests] == [('POST', f'{BOT}/getMe')] + [
        ('POST', f'{BOT}/sendMessage')
    ] * 3
    assert bot.sends() == [
        {'chat_id': 12345678, 'text': 'Hi there!'},
        {'chat_id': '@mychannel', 'text': 'Hi there!'},
        {'chat_id': -1001234567890, 'text': 'Hi there!'},
    ]
    send = api_server.find(f'{BOT}/sendMessage')[0]
    assert send.headers['Content-Type'] == 'application/json'
    assert send.headers['User-Agent'].startswith('django-sitemessage/')


@pytest.mark.parametrize(
    'link_preview, options',
    [
        (False, {'is_disabled': True}),
        (True, {'is_disabled': False}),
        (
            {'url': 'https://example.com/', 'prefer_small_media': True},
            {'url': 'https://example.com/', 'prefer_small_media': True},
        ),
    ],
)
def test_configured_defaults_go_with_every_message(api_server, bot, link_preview, options):
    make_messenger(
        api_server, parse_mode='HTML', disable_notification=True, message_thread_id=42, link_preview=link_preview
    )
    schedule_messages('<b>Hi</b>', recipients('telegram', '12345678'))

    send_scheduled_messages()

    assert bot.sends() == [
        {
            'chat_id': 12345678,
            'text': '<b>Hi</b>',
            'parse_mode': 'HTML',
            'disable_notification': True,
            'message_thread_id': 42,
            'link_preview_options': options,
        }
    ]


def test_disable_notification_false_is_sent_as_given(api_server, bot):
    make_messenger(api_server, disable_notification=False)
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    assert bot.sends() == [{'chat_id': 1, 'text': 'Hi', 'disable_notification': False}]


def test_the_bot_is_verified_once_per_batch(api_server, bot):
    make_messenger(api_server)
    for number in range(3):
        schedule_messages(f'Message {number}', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 6
    assert len(api_server.find(f'{BOT}/getMe')) == 1
    assert len(bot.sends()) == 6


def test_a_warm_up_failure_stores_the_service_description_without_the_token(api_server, bot):
    api_server.routes[('POST', f'{BOT}/getMe')] = failure(401, 'Unauthorized')
    make_messenger(api_server)
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR]
    [text] = error_texts()
    assert 'Telegram Error: Unauthorized (error 401)' in text
    assert TOKEN not in text
    assert bot.sends() == []


def test_a_user_without_a_chat_id_fails_without_a_request(api_server, bot, user):
    make_messenger(api_server)
    schedule_messages('Hi', recipients('telegram', user))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_FAILED]
    assert 'no chat id' in error_texts()[0]
    assert bot.sends() == []


# Long texts --------------------------------------------------------------------------------------


def test_a_text_over_4096_characters_goes_as_several_messages_and_the_dispatch_is_sent_once(api_server, bot):
    paragraph = ('word ' * 99 + 'end.').strip()  # 499 characters
    text = '\n\n'.join([paragraph] * 12)  # 6010 characters
    make_messenger(api_server)
    schedule_messages(text, recipients('telegram', '1'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT]
    parts = [body['text'] for body in bot.sends()]
    assert len(parts) == 2
    assert ''.join(parts) == text
    assert all(len(part) <= 4096 for part in parts)
    assert parts[0].endswith('end.\n\n') and parts[1].startswith('word')  # cut at a paragraph break


def test_a_long_text_is_sent_only_when_every_part_is_sent(api_server, bot):
    make_messenger(api_server)
    bot.script('1', None, SERVER_ERROR)  # the first part is delivered, the second is not
    schedule_messages('x ' * 3000, recipients('telegram', '1'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR]
    assert len(bot.sends()) == 2 and len(bot.delivered) == 1


def test_split_text_prefers_paragraphs_then_lines_then_spaces_then_a_hard_cut():
    assert split_text('short') == ['short']
    assert split_text('a' * 4096) == ['a' * 4096]

    lines = '\n'.join(['b' * 99] * 60)  # 5999 characters, no blank line
    parts = split_text(lines)
    assert ''.join(parts) == lines and parts[0].endswith('\n') and len(parts[0]) <= 4096

    words = ' '.join(['c' * 9] * 600)
    parts = split_text(words)
    assert ''.join(parts) == words and parts[0].endswith(' ') and len(parts[0]) <= 4096

    assert split_text('d' * 9000) == ['d' * 4096, 'd' * 4096, 'd' * 808]


def test_split_text_counts_utf16_units_as_telegram_does():
    text = '\U0001f600' * 3000  # each emoji is two UTF-16 units: 6000 units
    parts = split_text(text)
    assert ''.join(parts) == text
    assert [utf16_length(part) for part in parts] == [4096, 1904]


def test_a_paragraph_break_early_in_the_window_does_not_make_a_tiny_part():
    text = 'intro\n\n' + 'e' * 5000
    parts = split_text(text)
    assert ''.join(parts) == text and len(parts[0]) == 4096


# Errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'reply',
    [
        BLOCKED,
        failure(403, 'Forbidden: user is deactivated'),
        failure(403, 'Forbidden: bot was kicked from the group chat'),
        CHAT_NOT_FOUND,
        failure(400, 'Bad Request: can\'t parse entities: Unsupported start tag "foo" at byte offset 0'),
    ],
    ids=['blocked', 'deactivated', 'kicked', 'chat-not-found', 'bad-request'],
)
def test_refusals_for_a_chat_fail_the_dispatch_at_once_with_the_service_description(api_server, bot, reply):
    make_messenger(api_server)
    bot.script('1', reply)
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_FAILED, Dispatch.DISPATCH_STATUS_SENT]
    [text] = error_texts()
    assert reply.body['description'] in text and f'error {reply.status}' in text
    assert len(bot.sends()) == 2  # no retry of the refused chat in the same run


def test_a_group_upgraded_to_a_supergroup_fails_naming_the_new_chat_id(api_server, bot):
    make_messenger(api_server)
    bot.script(
        '-100',
        failure(400, 'Bad Request: group chat was upgraded to a supergroup chat', migrate_to_chat_id=-1009876543210),
    )
    schedule_messages('Hi', recipients('telegram', '-100'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_FAILED]
    assert 'the chat moved to -1009876543210' in error_texts()[0]


@pytest.mark.parametrize(
    'reply',
    [
        SERVER_ERROR,
        Reply(502, '<html>Bad Gateway</html>'),
        failure(401, 'Unauthorized'),  # the token was revoked mid-batch: not this chat's fault
    ],
    ids=['500', '502-html', '401'],
)
def test_server_side_and_bot_wide_errors_are_retried(api_server, bot, reply):
    make_messenger(api_server)
    bot.script('1', reply)
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR, Dispatch.DISPATCH_STATUS_SENT]
    assert Dispatch.objects.order_by('pk').first().retry_count == 1


def test_a_timeout_is_an_error_to_retry(api_server, bot):
    make_messenger(api_server, timeout=0.3)
    bot.script('1', Reply(200, {'ok': True, 'result': {}}, delay=1.5))
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR]
    [text] = error_texts()
    assert 'Timeout' in text and TOKEN not in text


def test_a_short_429_is_waited_out_and_retried_once(api_server, bot, no_sleep):
    make_messenger(api_server)
    bot.script('1', failure(429, 'Too Many Requests: retry after 3', retry_after=3))
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 2
    assert no_sleep == [3]
    assert [body['chat_id'] for body in bot.sends()] == [1, 1, 2]


def test_a_short_wait_really_sleeps_when_not_patched(api_server, bot):
    make_messenger(api_server)
    bot.script('1', failure(429, 'Too Many Requests: retry after 1', retry_after=1))
    schedule_messages('Hi', recipients('telegram', '1'))
    started = timezone.now()

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT]
    assert timezone.now() - started >= timedelta(seconds=1)


def test_a_long_429_errors_that_dispatch_and_defers_the_rest_of_the_batch(api_server, bot, no_sleep):
    messenger = make_messenger(api_server)
    bot.script('1', failure(429, 'Too Many Requests: retry after 600', retry_after=600))
    schedule_messages('First', recipients('telegram', ['1', '2', '3']))
    schedule_messages('Second', recipients('telegram', ['4']))
    before = timezone.now()

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR] + [Dispatch.DISPATCH_STATUS_PENDING] * 3
    limited, *deferred = Dispatch.objects.order_by('pk')
    assert limited.next_attempt_at >= before + timedelta(seconds=600)
    assert 'Too Many Requests: retry after 600 (error 429; retry after 600 s)' in error_texts()[0]
    assert [(d.retry_count, d.next_attempt_at) for d in deferred] == [(0, None)] * 3
    assert DispatchError.objects.count() == 1
    assert len(bot.sends()) == 1 and no_sleep == []
    assert 590 < messenger.rate_limit_left() <= 600

    # A later run while the bot is still limited makes no request at all.
    api_server.requests.clear()
    send_scheduled_messages()
    assert api_server.requests == []
    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR] + [Dispatch.DISPATCH_STATUS_PENDING] * 3
    assert Dispatch.objects.filter(retry_count=0).count() == 3


def test_a_second_429_after_the_short_wait_defers_the_batch(api_server, bot, no_sleep):
    make_messenger(api_server)
    too_many = failure(429, 'Too Many Requests: retry after 2', retry_after=2)
    bot.script('1', too_many, too_many)
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR, Dispatch.DISPATCH_STATUS_PENDING]
    assert no_sleep == [2]
    assert len(bot.sends()) == 2


def test_the_longest_wait_is_a_class_attribute(api_server, bot, no_sleep):
    messenger = make_messenger(api_server)
    messenger.retry_after_max_wait = 0
    bot.script('1', failure(429, 'Too Many Requests: retry after 1', retry_after=1))
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_ERROR, Dispatch.DISPATCH_STATUS_PENDING]
    assert no_sleep == []
    assert TelegramMessenger.retry_after_max_wait == 5


def test_a_429_on_get_me_defers_the_batch_without_counting_an_attempt(api_server, bot, no_sleep):
    api_server.routes[('POST', f'{BOT}/getMe')] = failure(429, 'Too Many Requests: retry after 60', retry_after=60)
    make_messenger(api_server)
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_PENDING] * 2
    assert list(Dispatch.objects.values_list('retry_count', flat=True)) == [0, 0]
    assert bot.sends() == []


# Secrets -----------------------------------------------------------------------------------------


def test_the_token_never_reaches_error_texts_even_when_echoed(api_server, bot):
    make_messenger(api_server)
    bot.script('1', Reply(502, f'<html>upstream failed for POST {BOT}/sendMessage</html>'))
    bot.script('2', failure(400, f'Bad Request: weird echo of {TOKEN}'))
    schedule_messages('Hi', recipients('telegram', ['1', '2']))

    send_scheduled_messages()

    texts = error_texts()
    assert len(texts) == 2 and 'upstream failed' in texts[0] and 'weird echo of ***' in texts[1]
    assert all(TOKEN not in text for text in texts)


def test_the_token_never_reaches_connection_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    messenger = TelegramMessenger(TOKEN, api_url=f'http://127.0.0.1:{free_port()}', timeout=2)
    register_messenger_objects(messenger)
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    [text] = error_texts()
    assert 'Telegram Error' in text and 'ConnectionError' in text and TOKEN not in text
    with pytest.raises(MessengerWarmupException) as caught:
        messenger.send_test_message('1', 'probe')
    assert TOKEN not in str(caught.value) and caught.value.__cause__ is None
    assert caplog.records
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_the_token_is_scrubbed_from_urllib3_debug_logs(api_server, bot, caplog):
    caplog.set_level(logging.DEBUG, logger='urllib3')
    make_messenger(api_server)
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    logged = [record.getMessage() for record in caplog.records if record.name.startswith('urllib3')]
    assert any('/bot***/sendMessage' in line for line in logged)
    assert all(TOKEN not in line for line in logged)


# Proxies -----------------------------------------------------------------------------------------


@pytest.mark.parametrize('callable_proxy', [False, True], ids=['dict', 'callable'])
def test_requests_go_through_the_configured_proxy(api_server, bot, callable_proxy):
    # The local server acts as the HTTP proxy: requests sends it the absolute URL.
    proxy = {'http': api_server.url}
    make_messenger(
        api_server, proxy=(lambda: proxy) if callable_proxy else proxy, api_url='http://api.telegram.invalid'
    )
    schedule_messages('Hi', recipients('telegram', '1'))

    send_scheduled_messages()

    assert statuses() == [Dispatch.DISPATCH_STATUS_SENT]
    send = api_server.find(f'{BOT}/sendMessage')[0]
    assert send.headers['Host'] == 'api.telegram.invalid'


# Updates -----------------------------------------------------------------------------------------


def update(update_id, kind='message', chat_id=1, **fields):
    message = {'message_id': update_id, 'date': 1700000000, 'chat': {'id': chat_id, 'type': 'private'}, **fields}
    return {'update_id': update_id, kind: message}


def test_get_updates_returns_updates_and_acknowledges_them_on_the_next_call(api_server):
    api_server.routes[('POST', f'{BOT}/getUpdates')] = [
        Reply(200, {'ok': True, 'result': [update(10, text='a'), update(11, text='b')]}),
        Reply(200, {'ok': True, 'result': []}),
    ]
    messenger = TelegramMessenger(TOKEN, api_url=api_server.url, timeout=5)

    assert [u['update_id'] for u in messenger.get_updates()] == [10, 11]
    assert messenger.get_updates() == []
    assert messenger.get_updates(offset=5, timeout=1) == []

    assert [r.json for r in api_server.find(f'{BOT}/getUpdates')] == [
        {'timeout': 0},
        {'offset': 12, 'timeout': 0},
        {'offset': 5, 'timeout': 1},
    ]
    assert api_server.find(f'{BOT}/getMe') == []


def test_get_updates_reports_the_service_error(api_server):
    api_server.routes[('POST', f'{BOT}/getUpdates')] = failure(
        409,
        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
    )
    messenger = TelegramMessenger(TOKEN, api_url=api_server.url, timeout=5)

    with pytest.raises(TelegramMessengerException, match='use deleteWebhook') as caught:
        messenger.get_updates()
    assert caught.value.error_code == 409


def test_get_chat_ids_finds_start_commands_and_deep_links_and_skips_other_updates(api_server):
    updates = [
        update(1, chat_id=101, text='/start'),
        update(2, kind='edited_message', chat_id=102, text='/start'),
        update(3, kind='channel_post', chat_id=103, text='/start'),
        {'update_id': 4, 'callback_query': {'id': 'q', 'from': {'id': 104}, 'data': '/start'}},
        update(5, chat_id=105, sticker={'file_id': 'x'}),
        update(6, chat_id=106, text='/start invite-abc123'),
        update(7, chat_id=101, text='/start'),
        update(8, chat_id=108, text='hello /start'),
        update(9, chat_id=109, text='/start@site_bot'),
        update(10, chat_id=110, text='/starting'),
        {'update_id': 11, 'my_chat_member': {'chat': {'id': 111}}},
    ]
    api_server.routes[('POST', f'{BOT}/getUpdates')] = [
        Reply(200, {'ok': True, 'result': updates}),
        Reply(200, {'ok': True, 'result': [update(12, chat_id=112, text='/start')]}),
    ]
    messenger = TelegramMessenger(TOKEN, api_url=api_server.url, timeout=5)

    assert messenger.get_chat_ids() == [101, 106, 109]
    assert messenger.get_chat_ids() == [112]  # the first updates were acknowledged
    assert api_server.find(f'{BOT}/getUpdates')[1].json == {'offset': 12, 'timeout': 0}


def test_get_chat_ids_of_no_updates_is_empty(api_server):
    api_server.routes[('POST', f'{BOT}/getUpdates')] = Reply(200, {'ok': True, 'result': []})
    assert TelegramMessenger(TOKEN, api_url=api_server.url).get_chat_ids() == []


# 1.4.0 helpers and construction -------------------------------------------------------------------


def test_send_command_and_verify_bot_return_the_result(api_server, bot):
    messenger = TelegramMessenger(TOKEN, api_url=api_server.url)

    assert messenger._verify_bot() == BOT_USER
    assert messenger._send_command('sendMessage', {'chat_id': 5, 'text': 'x'})['chat'] == {'id': 5, 'type': 'private'}
    api_server.routes[('POST', f'{BOT}/noSuchMethod')] = failure(404, 'Not Found')
    with pytest.raises(TelegramMessengerException, match='Not Found') as caught:
        messenger._send_command('noSuchMethod')
    assert (caught.value.description, caught.value.error_code) == ('Not Found', 404)


def test_identity_and_documented_constructor():
    messenger = TelegramMessenger('token', proxy={'https': 'socks5://user:pass@host:port'})

    assert (TelegramMessenger.alias, str(TelegramMessenger.title), TelegramMessenger.address_attr) == (
        'telegram',
        'Telegram',
        'telegram',
    )
    assert messenger.auth_token == 'token' and messenger.proxy == {'https': 'socks5://user:pass@host:port'}
    assert messenger.api_url == 'https://api.telegram.org'
    assert issubclass(TelegramMessengerException, MessengerException)


def test_a_missing_requests_package_names_the_extra(monkeypatch):
    monkeypatch.setattr('sitemessage.optional.find_spec', lambda name: None)

    with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[telegram\]'):
        TelegramMessenger('token')


# Probing -----------------------------------------------------------------------------------------


def test_probe_command_sends_to_the_given_chat_and_prints_the_result(api_server, bot):
    make_messenger(api_server)
    out = StringIO()

    call_command('sitemessage_probe', 'telegram', to='123', stdout=out)

    assert bot.sends() == [{'chat_id': 123, 'text': 'Test message from sitemessages.'}]
    assert "Probing function result: {'message_id': 1," in out.getvalue()
    assert 'Probing done.' in out.getvalue()


def test_probe_command_shows_the_service_error_without_the_token(api_server, bot):
    make_messenger(api_server)
    bot.script('123', CHAT_NOT_FOUND)
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'telegram', to='123', stdout=out, stderr=err)

    assert 'Error on probe: Telegram: Bad Request: chat not found (error 400)' in err.getvalue()
    assert TOKEN not in err.getvalue() + out.getvalue()


def test_probe_command_reports_a_bad_token(api_server, bot):
    api_server.routes[('POST', f'{BOT}/getMe')] = failure(401, 'Unauthorized')
    make_messenger(api_server)
    err = StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'telegram', to='123', stdout=StringIO(), stderr=err)

    assert 'Error on probe: Telegram Error: Unauthorized (error 401)' in err.getvalue()
    assert bot.sends() == []
