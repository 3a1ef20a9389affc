"""TwitterMessenger against a local imitation of X API v2 that verifies OAuth 1.0a signatures.

The imitation (:class:`FakeX`) checks each request's ``Authorization`` header the way X does:
it recomputes the HMAC-SHA1 signature over the signature base string (method, base URL, OAuth
and query parameters; a JSON body is not part of it) with an independent implementation, and
answers 401 when it does not match, as X documents.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import time
from datetime import timedelta
from typing import Dict, Optional
from urllib.parse import quote, unquote

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sitemessage.exceptions import MessengerWarmupException, PermanentDeliveryError, SiteMessageConfigurationError
from sitemessage.messengers.twitter import TwitterMessenger, rate_limit_wait, tweet_length
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.http_api import RecordedRequest, Reply
from tests.messengers.contract import MessengerContract

pytestmark = pytest.mark.django_db

API_KEY = 'consumer-key-Xq1'
API_SECRET = 'consumer-secret-Zr2'
ACCESS_TOKEN = '1234-access-token-Ab3'
ACCESS_TOKEN_SECRET = 'access-token-secret-Cd4'
SECRETS = [API_KEY, API_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET]

UNAUTHORIZED = {'title': 'Unauthorized', 'type': 'about:blank', 'status': 401, 'detail': 'Unauthorized'}
DUPLICATE = {
    'title': 'Forbidden',
    'type': 'about:blank',
    'status': 403,
    'detail': 'You are not allowed to create a Tweet with duplicate content.',
}
UNAVAILABLE = {'title': 'Service Unavailable', 'type': 'about:blank', 'status': 503, 'detail': 'Service Unavailable'}


# An independent OAuth 1.0a (RFC 5849) HMAC-SHA1 check, as the service performs it ----------------


def _pct(value: str) -> str:
    return quote(value, safe='~')  # RFC 5849 3.6: only unreserved characters stay as they are


def oauth_params(request: RecordedRequest) -> Dict[str, str]:
    header = request.headers.get('Authorization', '')
    assert header.startswith('OAuth '), f'no OAuth Authorization header: {header!r}'
    params = {}
    for part in header[len('OAuth ') :].split(','):
        key, _, value = part.strip().partition('=')
        params[unquote(key)] = unquote(value.strip('"'))
    return params


def hmac_sha1_signature(method: str, base_url: str, params, consumer_secret: str, token_secret: str) -> str:
    normalized = '&'.join(f'{key}={value}' for key, value in sorted((_pct(k), _pct(v)) for k, v in params))
    base_string = '&'.join((method.upper(), _pct(base_url), _pct(normalized)))
    key = f'{_pct(consumer_secret)}&{_pct(token_secret)}'
    return base64.b64encode(hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()).decode()


def signature_is_valid(request: RecordedRequest, consumer_secret: str, token_secret: str) -> bool:
    oauth = oauth_params(request)
    signature = oauth.pop('oauth_signature')
    oauth.pop('realm', None)
    params = list(oauth.items()) + [(key, value) for key, values in request.query.items() for value in values]
    base_url = f'http://{request.headers["Host"].lower()}{request.path}'
    expected = hmac_sha1_signature(request.method, base_url, params, consumer_secret, token_secret)
    return hmac.compare_digest(signature, expected)


class FakeX:
    """X API v2 on loopback: ``POST /2/tweets`` and ``GET /2/users/me`` for properly signed requests."""

    def __init__(self, server):
        self.server = server
        self.url = server.url
        self.token_secret = ACCESS_TOKEN_SECRET  # what X holds; change it to revoke the token
        self.posted = []  # texts accepted, in order
        self.refuse: Dict[str, Reply] = {}  # mentioned address -> reply
        self.nonces = set()
        server.routes[('POST', '/2/tweets')] = self.create_tweet
        server.routes[('GET', '/2/users/me')] = self.users_me

    def refused_auth(self, request: RecordedRequest) -> Optional[Reply]:
        oauth = oauth_params(request)
        if (
            oauth.get('oauth_consumer_key') != API_KEY
            or oauth.get('oauth_token') != ACCESS_TOKEN
            or oauth.get('oauth_signature_method') != 'HMAC-SHA1'
            or oauth.get('oauth_version') != '1.0'
            or abs(int(oauth['oauth_timestamp']) - time.time()) > 300
            or oauth['oauth_nonce'] in self.nonces
            or not signature_is_valid(request, API_SECRET, self.token_secret)
        ):
            return Reply(401, UNAUTHORIZED)
        self.nonces.add(oauth['oauth_nonce'])
        return None

    def users_me(self, request: RecordedRequest) -> Reply:
        return self.refused_auth(request) or Reply(
            200, {'data': {'id': '2244994945', 'name': 'Robot', 'username': 'robot'}}
        )

    def create_tweet(self, request: RecordedRequest) -> Reply:
        refused = self.refused_auth(request)
        if refused:
            return refused
        text = request.json['text']
        for address, reply in self.refuse.items():
            if text.startswith(f'@{address} '):
                return reply
        if text in self.posted:
            return Reply(403, DUPLICATE)
        self.posted.append(text)
        return Reply(201, {'data': {'id': str(1445880548472328192 + len(self.posted)), 'text': text}})

    def tweet_requests(self):
        return self.server.find('/2/tweets', 'POST')


@pytest.fixture
def x_api(api_server):
    return FakeX(api_server)


def make_twitter(x_api, **kwargs) -> TwitterMessenger:
    kwargs.setdefault('api_url', x_api.url)
    kwargs.setdefault('timeout', 5)
    messenger = TwitterMessenger(API_KEY, API_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET, **kwargs)
    register_messenger_objects(messenger)
    return messenger


def schedule(text: str, *addresses) -> None:
    schedule_messages(text, recipients('twitter', list(addresses)))


def dispatches():
    return list(Dispatch.objects.order_by('pk'))


def error_texts() -> str:
    return '\n'.join(DispatchError.objects.order_by('pk').values_list('error_log', flat=True))


# The contract ---------------------------------------------------------------------------------------


class TestTwitterContract(MessengerContract):
    secrets = SECRETS

    @pytest.fixture(autouse=True)
    def _x(self, x_api):
        self.x = x_api

    def make_messenger(self):
        # Verifying credentials makes the warm-up ask X, so breaking the token breaks the warm-up.
        self.messenger = TwitterMessenger(
            API_KEY,
            API_SECRET,
            ACCESS_TOKEN,
            ACCESS_TOKEN_SECRET,
            api_url=self.x.url,
            timeout=5,
            verify_credentials=True,
        )
        return self.messenger

    def good_address(self, index):
        return f'user{index}'

    def received_texts(self):
        return list(self.x.posted)

    def break_warm_up(self):
        self.x.token_secret = 'revoked'  # X no longer accepts the access token

    def fail_permanently(self, address):
        self.x.refuse[address] = Reply(403, DUPLICATE)

    def fail_temporarily(self, address):
        self.x.refuse[address] = Reply(503, UNAVAILABLE)


# What goes on the wire ------------------------------------------------------------------------------


def test_signature_check_used_here_reproduces_x_documented_example():
    # "Creating a signature" in X's OAuth 1.0a docs: these inputs give hCtSmYh+iHYCEqBWrE7C7hYmtUk=.
    params = [
        ('include_entities', 'true'),
        ('oauth_consumer_key', 'xvz1evFS4wEEPTGEFPHBog'),
        ('oauth_nonce', 'kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg'),
        ('oauth_signature_method', 'HMAC-SHA1'),
        ('oauth_timestamp', '1318622958'),
        ('oauth_token', '370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb'),
        ('oauth_version', '1.0'),
        ('status', 'Hello Ladies + Gentlemen, a signed OAuth request!'),
    ]
    signature = hmac_sha1_signature(
        'POST',
        'https://api.twitter.com/1.1/statuses/update.json',
        params,
        'kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw',
        'LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE',
    )
    assert signature == 'hCtSmYh+iHYCEqBWrE7C7hYmtUk='


def test_mention_is_posted_as_signed_json_to_2_tweets(x_api):
    messenger = make_twitter(x_api)
    result = messenger.send_test_message('someone', 'sometext')

    [request] = x_api.server.requests
    assert (request.method, request.path, request.query) == ('POST', '/2/tweets', {})
    assert request.headers['Content-Type'] == 'application/json'
    assert request.json == {'text': '@someone sometext'}
    oauth = oauth_params(request)
    assert oauth['oauth_consumer_key'] == API_KEY and oauth['oauth_token'] == ACCESS_TOKEN
    assert oauth['oauth_signature_method'] == 'HMAC-SHA1' and oauth['oauth_version'] == '1.0'
    assert signature_is_valid(request, API_SECRET, ACCESS_TOKEN_SECRET)
    assert not signature_is_valid(request, API_SECRET, 'another-token-secret')
    assert not any(secret in request.body.decode() for secret in SECRETS)
    assert result == {'id': '1445880548472328193', 'text': '@someone sometext'}


def test_empty_address_posts_the_text_alone(x_api):
    make_twitter(x_api).send_test_message('', 'sometext')
    assert [r.json for r in x_api.tweet_requests()] == [{'text': 'sometext'}]
    assert x_api.posted == ['sometext']


def test_build_message_keeps_the_1_4_0_signature():
    assert TwitterMessenger._build_message('someone', 'sometext') == '@someone sometext'
    assert TwitterMessenger._build_message('@someone', 'sometext') == '@someone sometext'
    assert TwitterMessenger._build_message('', 'sometext') == 'sometext'
    assert TwitterMessenger._build_message(None, 'sometext') == 'sometext'


def test_scheduled_tweets_are_posted_each_with_a_fresh_signature(x_api):
    make_twitter(x_api)
    schedule('Hey, that is my tweet for you.', 'idlesign', '@other')
    schedule('My tweet.', '')
    send_scheduled_messages()

    assert [d.dispatch_status for d in dispatches()] == [Dispatch.DISPATCH_STATUS_SENT] * 3
    assert sorted(x_api.posted) == sorted(
        ['@idlesign Hey, that is my tweet for you.', '@other Hey, that is my tweet for you.', 'My tweet.']
    )
    nonces = [oauth_params(r)['oauth_nonce'] for r in x_api.tweet_requests()]
    assert len(set(nonces)) == 3


def test_requests_go_through_the_proxy_signed_for_the_real_host(x_api):
    proxies = {'http': x_api.url}
    messenger = make_twitter(x_api, api_url='http://api.x.invalid', proxy=lambda: proxies)
    messenger.send_test_message('someone', 'via proxy')

    [request] = x_api.tweet_requests()
    assert request.headers['Host'] == 'api.x.invalid'
    assert signature_is_valid(request, API_SECRET, ACCESS_TOKEN_SECRET)  # base URL http://api.x.invalid/2/tweets


def test_user_without_a_twitter_handle_is_not_posted_publicly(x_api, user):
    make_twitter(x_api)
    schedule_messages('for one person', recipients('twitter', user))
    send_scheduled_messages()

    assert dispatches()[0].dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert 'no `twitter` handle' in error_texts()
    assert x_api.server.requests == []


# Warm-up ------------------------------------------------------------------------------------------


def test_warm_up_makes_no_request_unless_asked_to_verify(x_api):
    make_twitter(x_api).before_send()
    assert x_api.server.requests == []

    make_twitter(x_api, verify_credentials=True).before_send()
    [request] = x_api.server.requests
    assert (request.method, request.path) == ('GET', '/2/users/me')
    assert signature_is_valid(request, API_SECRET, ACCESS_TOKEN_SECRET)


def test_1_4_0_get_helper_is_signed_too(x_api):
    assert make_twitter(x_api).get(f'{x_api.url}/2/users/me')['data']['username'] == 'robot'
    [request] = x_api.server.requests
    assert signature_is_valid(request, API_SECRET, ACCESS_TOKEN_SECRET)


def test_warm_up_fails_on_a_missing_credential_without_a_request(x_api):
    messenger = TwitterMessenger(API_KEY, '', ACCESS_TOKEN, ACCESS_TOKEN_SECRET, api_url=x_api.url)
    with pytest.raises(MessengerWarmupException, match='credentials missing: api_secret'):
        messenger.before_send()
    assert x_api.server.requests == []


def test_verified_warm_up_reports_x_refusal_without_secrets(x_api):
    x_api.token_secret = 'revoked'
    messenger = make_twitter(x_api, verify_credentials=True)
    with pytest.raises(MessengerWarmupException) as raised:
        messenger.before_send()
    assert 'HTTP 401: Unauthorized' in str(raised.value)
    assert not any(secret in str(raised.value) for secret in SECRETS)


# Limits -------------------------------------------------------------------------------------------


def test_post_over_280_characters_fails_without_a_request(x_api):
    make_twitter(x_api)
    schedule('x' * 275, 'someone')  # '@someone ' makes it 284
    schedule('y' * 280, '')
    send_scheduled_messages()

    too_long, exact = dispatches()
    assert too_long.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert 'the post is 284 characters long' in error_texts() and 'the limit is 280' in error_texts()
    assert exact.dispatch_status == Dispatch.DISPATCH_STATUS_SENT
    assert [r.json['text'] for r in x_api.tweet_requests()] == ['y' * 280]


def test_urls_count_23_characters_whatever_their_length(x_api):
    url = 'https://example.com/' + 'p' * 200
    text = 'a' * 256 + ' ' + url  # len() is 477; X counts 256 + 1 + 23 = 280
    assert tweet_length(text) == 280
    make_twitter(x_api).send_test_message('', text)
    assert x_api.posted == [text]
    with pytest.raises(PermanentDeliveryError, match='281 characters'):
        make_twitter(x_api).send_test_message('', 'b' + text)


def test_length_is_weighted_as_x_counts_it():
    assert tweet_length('hello') == 5
    assert tweet_length('日本語') == 6  # CJK weighs 2
    assert tweet_length('😀') == 2
    assert tweet_length('👍🏽') == 2  # skin tone modifier joins the emoji
    assert tweet_length('👨\u200d👩\u200d👧') == 2  # one ZWJ sequence
    assert tweet_length('🇫🇷🇩🇪') == 4  # two flags
    assert tweet_length('e\u0301') == 1  # NFC makes it one letter
    assert tweet_length('see https://example.com/page.') == 4 + 23 + 1  # trailing period is not the URL's
    assert tweet_length('“quoted” — ok') == 13  # quotes and dashes of general punctuation weigh 1
    assert tweet_length('ok…') == 4  # the ellipsis (U+2026) is outside twitter-text's light ranges


def test_max_length_none_leaves_the_limit_to_x(x_api):
    make_twitter(x_api, max_length=None).send_test_message('', 'z' * 300)
    assert x_api.posted == ['z' * 300]


# Error mapping ------------------------------------------------------------------------------------


def test_duplicate_content_fails_that_dispatch_with_x_own_words(x_api):
    make_twitter(x_api).send_test_message('', 'same words')
    schedule('same words', '')
    schedule('other words', '')
    send_scheduled_messages()

    duplicate, other = dispatches()
    assert duplicate.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert other.dispatch_status == Dispatch.DISPATCH_STATUS_SENT
    assert error_texts() == (
        'Tweet: HTTP 403: Forbidden: You are not allowed to create a Tweet with duplicate content.'
    )


def test_errors_array_is_reported_with_codes(x_api, api_server):
    api_server.routes[('POST', '/2/tweets')] = Reply(
        400, {'errors': [{'message': 'Status is a duplicate.', 'code': 187}]}
    )
    make_twitter(x_api)
    schedule('old shape', '')
    send_scheduled_messages()

    assert dispatches()[0].dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert 'HTTP 400: Status is a duplicate. (code 187)' in error_texts()


def test_rate_limit_defers_the_run_until_x_rate_limit_reset(x_api, api_server):
    reset = int(time.time()) + 3600
    api_server.routes[('POST', '/2/tweets')] = Reply(
        429,
        {'title': 'Too Many Requests', 'detail': 'Too Many Requests', 'type': 'about:blank', 'status': 429},
        headers={'x-rate-limit-limit': '100', 'x-rate-limit-remaining': '0', 'x-rate-limit-reset': str(reset)},
    )
    make_twitter(x_api)
    schedule('first', 'a', 'b')
    schedule('second', 'c')
    send_scheduled_messages()

    assert len(x_api.tweet_requests()) == 1  # the rest of the run is not attempted
    assert [d.dispatch_status for d in dispatches()] == [Dispatch.DISPATCH_STATUS_ERROR] * 3
    for dispatch in dispatches():
        assert dispatch.next_attempt_at >= timezone.now() + timedelta(seconds=3590)
    assert 'HTTP 429: Too Many Requests' in error_texts()
    assert 'Not attempted: an earlier post in this run was refused' in error_texts()

    send_scheduled_messages()  # a run before the reset leaves them alone
    assert len(x_api.tweet_requests()) == 1


def test_exhausted_daily_cap_defers_until_its_own_reset():
    now = time.time()
    headers = {
        'x-rate-limit-remaining': '99',
        'x-rate-limit-reset': str(int(now) + 900),
        'x-user-limit-24hour-remaining': '0',
        'x-user-limit-24hour-reset': str(int(now) + 20000),
    }
    assert 19990 <= rate_limit_wait(headers) <= 20000
    assert 29 <= rate_limit_wait({'Retry-After': '30'}) <= 30
    assert rate_limit_wait({}) is None


def test_rejected_credentials_stop_the_run_and_are_retried_later(x_api):
    x_api.token_secret = 'revoked'
    make_twitter(x_api)
    schedule('one', 'a', 'b')
    send_scheduled_messages()

    assert len(x_api.tweet_requests()) == 1
    assert [d.dispatch_status for d in dispatches()] == [Dispatch.DISPATCH_STATUS_ERROR] * 2
    assert 'Tweet: HTTP 401: Unauthorized' in error_texts()

    x_api.token_secret = ACCESS_TOKEN_SECRET  # the token is fixed: the next run posts them
    send_scheduled_messages()
    assert [d.dispatch_status for d in dispatches()] == [Dispatch.DISPATCH_STATUS_SENT] * 2


def test_server_error_and_timeout_are_retried(x_api, api_server):
    api_server.routes[('POST', '/2/tweets')] = [
        Reply(503, UNAVAILABLE, headers={'Retry-After': '120'}),
        Reply(201, {'data': {'id': '1', 'text': 'late'}}, delay=2),
    ]
    make_twitter(x_api, timeout=0.5)
    schedule('unlucky', 'a', 'b')
    send_scheduled_messages()

    first, second = dispatches()
    assert first.dispatch_status == second.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert first.next_attempt_at >= timezone.now() + timedelta(seconds=110)
    errors = error_texts()
    assert 'HTTP 503: Service Unavailable' in errors and 'ReadTimeout' in errors


def test_secrets_echoed_by_the_service_are_redacted(x_api, api_server):
    def echo(request):
        return Reply(
            400,
            {
                'title': 'Invalid Request',
                'detail': f'bad header {request.headers["Authorization"]} and {API_SECRET}/{ACCESS_TOKEN_SECRET}',
            },
        )

    api_server.routes[('POST', '/2/tweets')] = echo
    make_twitter(x_api)
    schedule('leaky', '')
    send_scheduled_messages()

    errors = error_texts()
    assert 'bad header OAuth' in errors and '***' in errors
    for secret in SECRETS:
        assert secret not in errors


def test_missing_oauth_library_names_the_pip_extra(monkeypatch):
    from sitemessage import optional

    real_find_spec = optional.find_spec
    monkeypatch.setattr(
        optional, 'find_spec', lambda name: None if name == 'requests_oauthlib' else real_find_spec(name)
    )
    with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[twitter\]'):
        TwitterMessenger(API_KEY, API_SECRET, ACCESS_TOKEN, ACCESS_TOKEN_SECRET)


# Probing ------------------------------------------------------------------------------------------


def test_probe_command_posts_a_mention(x_api):
    make_twitter(x_api)
    out = io.StringIO()
    call_command('sitemessage_probe', 'twitter', to='someone', stdout=out)

    assert x_api.posted == ['@someone Test message from sitemessages.']
    assert "Probing function result: {'id': '1445880548472328193'" in out.getvalue()


def test_probe_command_reports_x_error_text_without_secrets(x_api):
    make_twitter(x_api).send_test_message('someone', 'Test message from sitemessages.')
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'twitter', to='someone', stdout=io.StringIO(), stderr=err)

    assert 'You are not allowed to create a Tweet with duplicate content.' in err.getvalue()
    for secret in SECRETS:
        assert secret not in err.getvalue()
