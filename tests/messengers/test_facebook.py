"""FacebookMessenger against a local imitation of the Graph API (tests/http_api.py).

The imitation speaks the documented format: ``POST /<version>/<page>/feed`` with form fields,
``{"id": "<page>_<post>"}`` on success and ``{"error": {"message", "type", "code",
"error_subcode", "fbtrace_id"}}`` with HTTP 400/403/500 on failure.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from sitemessage.exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
    TemporaryDeliveryError,
)
from sitemessage.messengers.facebook import FacebookMessenger, FacebookMessengerException
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.fakes import free_port
from tests.http_api import Reply
from tests.messengers.contract import MessengerContract

PAGE_TOKEN = 'EAABpage0token0never0shown'
PAGE_ID = '104857600'
ME, FEED = '/v24.0/me', '/v24.0/me/feed'


def graph_error(code, message, *, subcode=None, status=400, kind='OAuthException', headers=None):
    error = {'message': message, 'type': kind, 'code': code, 'fbtrace_id': 'AbCdEfTrace'}
    if subcode is not None:
        error['error_subcode'] = subcode
    return Reply(status, {'error': error}, headers or {})


def expired_token(request):
    # Harsher than Facebook: the message echoes the token, to prove it is redacted.
    token = request.query.get('access_token', [''])[0] or request.form.get('access_token', '')
    return graph_error(190, f'Error validating access token: Session has expired for {token}.', subcode=463)


class GraphAPI:
    """The imitation's state: posts accepted, and replies scripted for the N-th post from now."""

    def __init__(self, server):
        self.server = server
        self.posted = []
        self.count = 0
        self.scripted = {}
        server.routes[('GET', ME)] = Reply(200, {'id': PAGE_ID, 'name': 'My Page'})
        server.routes[('POST', FEED)] = self.feed

    def feed(self, request):
        self.count += 1
        if self.count in self.scripted:
            reply = self.scripted.pop(self.count)
            return reply(request) if callable(reply) else reply
        self.posted.append(request.form)
        return Reply(200, {'id': f'{PAGE_ID}_{self.count}'})

    def fail_post(self, ahead, reply):
        """Answer the ``ahead``-th post from now (1 = the next one) with ``reply`` (or ``reply(request)``)."""
        self.scripted[self.count + ahead] = reply


@pytest.fixture
def graph(api_server):
    return GraphAPI(api_server)


@pytest.fixture
def fb(graph):
    messenger = FacebookMessenger(PAGE_TOKEN, api_url=graph.server.url, timeout=5)
    register_messenger_objects(messenger)
    return messenger


def post_once(text='Hello page'):
    schedule_messages(text, recipients('fb', ''))
    send_scheduled_messages()
    return Dispatch.objects.get()


class TestFacebookContract(MessengerContract):
    """Every dispatch of ``fb`` has the address ``''`` (posts go to the one page), so the address
    cannot pick the post to refuse: ``fail_*`` script the *second* post from now, which the
    contract always makes for ``good_address(1)`` (dispatches are sent in address-index order)."""

    secrets = [PAGE_TOKEN]

    @pytest.fixture(autouse=True)
    def _graph(self, graph):
        self.graph = graph

    def make_messenger(self):
        return FacebookMessenger(PAGE_TOKEN, api_url=self.graph.server.url, timeout=5)

    def good_address(self, index):
        return ''

    def received_texts(self):
        return [form.get('message') or form.get('link') for form in self.graph.posted]

    def break_warm_up(self):
        self.graph.server.routes[('GET', ME)] = expired_token

    def fail_permanently(self, address):
        self.graph.fail_post(2, graph_error(200, "(#200) The user hasn't authorized the application", status=403))

    def fail_temporarily(self, address):
        self.graph.fail_post(2, graph_error(32, 'Page request limit reached'))


# The wire format ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_text_is_posted_as_message_to_the_page_feed_with_the_token_as_form_field(fb, api_server):
    assert post_once('Hello page').dispatch_status == Dispatch.DISPATCH_STATUS_SENT

    verify, post = api_server.requests
    assert (verify.method, verify.path) == ('GET', ME)
    assert verify.query == {'fields': ['id,name'], 'access_token': [PAGE_TOKEN]}
    assert (post.method, post.path, post.query) == ('POST', FEED, {})
    assert post.headers['Content-Type'] == 'application/x-www-form-urlencoded'
    assert post.form == {'message': 'Hello page', 'access_token': PAGE_TOKEN}
    assert post.headers['User-Agent'].startswith('django-sitemessage/')


@pytest.mark.django_db
def test_a_text_that_is_one_url_is_posted_as_link(fb, api_server):
    schedule_messages('https://example.com/news/1?x=1', recipients('fb', ''))
    schedule_messages('https://example.com/news/2 is out', recipients('fb', ''))
    send_scheduled_messages()

    forms = [request.form for request in api_server.find(FEED)]
    assert forms == [
        {'link': 'https://example.com/news/1?x=1', 'access_token': PAGE_TOKEN},
        {'message': 'https://example.com/news/2 is out', 'access_token': PAGE_TOKEN},
    ]


def test_defaults_speak_to_the_real_graph_api_with_a_current_version():
    messenger = FacebookMessenger('token')
    assert (messenger.alias, str(messenger.title), messenger.address_attr) == ('fb', 'Facebook', None)
    assert messenger.api_url == 'https://graph.facebook.com'
    assert messenger.graph_version == 'v24.0'
    assert messenger.page_id == 'me' and messenger.access_token == 'token'
    assert messenger.proxy is None


def test_graph_version_comes_from_the_constructor_then_the_setting(graph):
    graph.server.routes[('GET', '/v25.0/me')] = Reply(200, {'id': '1'})
    graph.server.routes[('POST', '/v25.0/me/feed')] = Reply(200, {'id': '1_1'})
    with override_settings(SITEMESSAGE_FACEBOOK_GRAPH_VERSION='v25.0'):
        FacebookMessenger(PAGE_TOKEN, api_url=graph.server.url).send_test_message('', 'via setting')
    graph.server.routes[('POST', '/v23.0/me/feed')] = Reply(200, {'id': '1_2'})
    graph.server.routes[('GET', '/v23.0/me')] = Reply(200, {'id': '1'})
    FacebookMessenger(PAGE_TOKEN, api_url=graph.server.url, graph_version='23.0').send_test_message('', 'via arg')

    assert [(r.method, r.path) for r in graph.server.requests] == [
        ('GET', '/v25.0/me'),
        ('POST', '/v25.0/me/feed'),
        ('GET', '/v23.0/me'),
        ('POST', '/v23.0/me/feed'),
    ]


def test_page_id_selects_the_feed(graph):
    graph.server.routes[('POST', f'/v24.0/{PAGE_ID}/feed')] = Reply(200, {'id': f'{PAGE_ID}_77'})
    messenger = FacebookMessenger(PAGE_TOKEN, api_url=graph.server.url, page_id=PAGE_ID)

    assert messenger.send_test_message('', 'to the page') == f'{PAGE_ID}_77'
    assert graph.server.requests[-1].form == {'message': 'to the page', 'access_token': PAGE_TOKEN}


def test_probe_returns_the_post_id_and_ignores_the_address(fb, graph):
    assert fb.send_test_message(None, 'probe') == f'{PAGE_ID}_1'
    assert graph.posted == [{'message': 'probe', 'access_token': PAGE_TOKEN}]


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    'reply, status',
    [
        (graph_error(4, 'Application request limit reached', status=403), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(17, 'User request limit reached', status=403), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(32, 'Page request limit reached', status=403), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(613, 'Calls to this api have exceeded the rate limit.'), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(1, 'An unknown error occurred', status=500), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(2, 'Service temporarily unavailable', status=503), Dispatch.DISPATCH_STATUS_ERROR),
        (graph_error(999, 'Something odd, retry', status=500), Dispatch.DISPATCH_STATUS_ERROR),
        (
            graph_error(190, 'Error validating access token: Session has expired', subcode=463),
            Dispatch.DISPATCH_STATUS_ERROR,
        ),
        (graph_error(100, 'Invalid parameter'), Dispatch.DISPATCH_STATUS_FAILED),
        (
            graph_error(10, 'Application does not have permission for this action', status=403),
            Dispatch.DISPATCH_STATUS_FAILED,
        ),
        (
            graph_error(200, "(#200) The user hasn't authorized the application to perform this action", status=403),
            Dispatch.DISPATCH_STATUS_FAILED,
        ),
        (
            graph_error(210, '(#210) A page access token is required to request this resource.'),
            Dispatch.DISPATCH_STATUS_FAILED,
        ),
        (graph_error(506, 'Duplicate status message'), Dispatch.DISPATCH_STATUS_FAILED),
    ],
    ids=lambda value: str(value.body['error']['code']) if isinstance(value, Reply) else str(value),
)
def test_graph_errors_are_retried_or_failed_by_code(fb, graph, reply, status):
    graph.fail_post(1, reply)

    dispatch = post_once()

    assert dispatch.dispatch_status == status
    error = reply.body['error']
    [log] = DispatchError.objects.values_list('error_log', flat=True)
    assert error['message'] in log and f'code {error["code"]}' in log and 'fbtrace_id AbCdEfTrace' in log


@pytest.mark.django_db
def test_an_expired_token_on_a_post_is_reported_clearly_and_retried(fb, graph):
    graph.fail_post(1, expired_token)

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    log = DispatchError.objects.get().error_log
    assert log.startswith('Facebook page access token expired or invalid: Error validating access token')
    assert 'code 190, subcode 463' in log and PAGE_TOKEN not in log


@pytest.mark.django_db
def test_an_expired_token_fails_the_warm_up_and_nothing_is_posted(fb, graph):
    graph.server.routes[('GET', ME)] = expired_token

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert graph.server.find(FEED) == []
    log = DispatchError.objects.get().error_log
    assert log.startswith('Messenger warm-up failed: Facebook page access token expired or invalid:')
    assert PAGE_TOKEN not in log and '***' in log


@pytest.mark.django_db
def test_rate_limit_waits_for_the_time_facebook_estimates(fb, graph):
    usage = '{"%s": [{"type": "pages", "call_count": 100, "estimated_time_to_regain_access": 5}]}' % PAGE_ID
    graph.fail_post(
        1, graph_error(32, 'Page request limit reached', status=403, headers={'X-Business-Use-Case-Usage': usage})
    )

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert dispatch.next_attempt_at >= timezone.now() + timedelta(seconds=290)


@pytest.mark.django_db
def test_rate_limit_honours_retry_after(fb, graph):
    graph.fail_post(1, graph_error(4, 'Application request limit reached', headers={'Retry-After': '120'}))

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert (
        timezone.now() + timedelta(seconds=110) <= dispatch.next_attempt_at <= timezone.now() + timedelta(seconds=125)
    )


@pytest.mark.django_db
def test_a_server_error_without_json_is_retried(fb, graph):
    graph.fail_post(1, Reply(502, '<html>Bad Gateway</html>'))

    assert post_once().dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert 'Facebook: HTTP 502: <html>Bad Gateway</html>' in DispatchError.objects.get().error_log


@pytest.mark.django_db
def test_a_timeout_is_retried(graph):
    register_messenger_objects(FacebookMessenger(PAGE_TOKEN, api_url=graph.server.url, timeout=0.2))
    graph.fail_post(1, Reply(200, {'id': 'late'}, delay=1))

    assert post_once().dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert 'Timeout' in DispatchError.objects.get().error_log


def test_api_errors_raise_facebook_exceptions_that_say_if_retrying_helps(fb, graph):
    graph.fail_post(1, graph_error(200, '(#200) Permissions error', status=403))
    graph.fail_post(2, graph_error(613, 'Calls to this api have exceeded the rate limit.'))

    with pytest.raises(FacebookMessengerException) as permanent:
        fb.send_test_message('', 'one')
    with pytest.raises(FacebookMessengerException) as temporary:
        fb.send_test_message('', 'two')

    assert isinstance(permanent.value, PermanentDeliveryError) and permanent.value.code == 200
    assert isinstance(temporary.value, TemporaryDeliveryError) and temporary.value.code == 613
    assert str(permanent.value) == (
        'Facebook: HTTP 403: (#200) Permissions error [code 200, type OAuthException, fbtrace_id AbCdEfTrace]'
    )


def test_tokens_are_redacted_even_when_percent_encoded_in_urls():
    token = 'page|token/with+odd=chars'
    messenger = FacebookMessenger(token, api_url=f'http://127.0.0.1:{free_port()}', timeout=2)

    with pytest.raises(MessengerWarmupException) as info:
        messenger.send_test_message('', 'nobody listens')

    text = str(info.value)
    assert 'ConnectionError' in text
    for form in (token, 'page%7Ctoken%2Fwith%2Bodd%3Dchars', 'token%2Fwith'):
        assert form not in text
    assert info.value.__cause__ is None or token not in str(info.value.__cause__)


def test_missing_requests_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'requests', None)

    with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[facebook\]'):
        FacebookMessenger('token')


# Page tokens ------------------------------------------------------------------------------------


def exchange_routes(server, accounts):
    server.routes[('GET', '/v24.0/oauth/access_token')] = Reply(
        200, {'access_token': 'long0lived0user0token', 'token_type': 'bearer', 'expires_in': 5183944}
    )
    server.routes[('GET', '/v24.0/me/accounts')] = accounts


def test_get_page_access_token_exchanges_the_user_token_then_lists_pages(api_server):
    exchange_routes(
        api_server,
        Reply(
            200,
            {
                'data': [
                    {
                        'name': 'My Page',
                        'access_token': 'page0token0one',
                        'id': '1',
                        'category': 'Blog',
                        'tasks': ['CREATE_CONTENT'],
                    },
                    {'name': 'Other Page', 'access_token': 'page0token0two', 'id': '2', 'category': 'Shop'},
                    {'name': 'Not Mine', 'id': '3'},
                ],
                'paging': {'cursors': {'before': 'a', 'after': 'b'}},
            },
        ),
    )
    messenger = FacebookMessenger('', api_url=api_server.url)

    tokens = messenger.get_page_access_token('app-id', 'app0secret', 'short0user0token')

    assert tokens == {'My Page': 'page0token0one', 'Other Page': 'page0token0two'}
    exchange, accounts = api_server.requests
    assert (exchange.method, exchange.path) == ('GET', '/v24.0/oauth/access_token')
    assert exchange.query == {
        'grant_type': ['fb_exchange_token'],
        'client_id': ['app-id'],
        'client_secret': ['app0secret'],
        'fb_exchange_token': ['short0user0token'],
    }
    assert (accounts.method, accounts.path) == ('GET', '/v24.0/me/accounts')
    assert accounts.query == {'access_token': ['long0lived0user0token']}


def test_get_page_access_token_follows_paging(api_server):
    next_url = f'{api_server.url}/v24.0/me/accounts?access_token=long0lived0user0token&after=b'
    exchange_routes(
        api_server,
        [
            Reply(200, {'data': [{'name': 'First', 'access_token': 't1', 'id': '1'}], 'paging': {'next': next_url}}),
            Reply(200, {'data': [{'name': 'Second', 'access_token': 't2', 'id': '2'}], 'paging': {}}),
        ],
    )

    tokens = FacebookMessenger('', api_url=api_server.url).get_page_access_token('1', 'secret', 'user')

    assert tokens == {'First': 't1', 'Second': 't2'}
    assert api_server.requests[-1].query == {'access_token': ['long0lived0user0token'], 'after': ['b']}


def test_get_page_access_token_errors_hide_every_secret(api_server):
    api_server.routes[('GET', '/v24.0/oauth/access_token')] = lambda request: graph_error(
        101,
        f'Error validating client secret {request.query["client_secret"][0]} '
        f'for {request.query["fb_exchange_token"][0]}',
    )

    with pytest.raises(FacebookMessengerException) as info:
        FacebookMessenger('', api_url=api_server.url).get_page_access_token('1', 'app0secret', 'short0user0token')

    text = str(info.value)
    assert 'Error validating client secret' in text
    assert 'app0secret' not in text and 'short0user0token' not in text


# Probing ------------------------------------------------------------------------------------------


def test_probe_command_prints_the_post_id(fb, graph):
    out = StringIO()
    call_command('sitemessage_probe', 'fb', stdout=out)

    assert f'Probing function result: {PAGE_ID}_1.' in out.getvalue()
    assert graph.posted == [{'message': 'Test message from sitemessages.', 'access_token': PAGE_TOKEN}]


def test_probe_command_reports_facebooks_own_error_text(fb, graph):
    graph.fail_post(
        1,
        graph_error(
            200, '(#200) If posting to a page, requires both pages_read_engagement and pages_manage_posts', status=403
        ),
    )
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'fb', stdout=out, stderr=err)

    assert 'Error on probe: Facebook: HTTP 403: (#200) If posting to a page, requires both' in err.getvalue()
    assert PAGE_TOKEN not in err.getvalue() + out.getvalue()


def test_probe_command_reports_an_expired_token(fb, graph):
    graph.server.routes[('GET', ME)] = expired_token
    err = StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'fb', stdout=StringIO(), stderr=err)

    assert 'Error on probe: Facebook page access token expired or invalid: Error validating' in err.getvalue()
    assert PAGE_TOKEN not in err.getvalue()


def test_facebook_errors_are_messenger_errors():
    assert issubclass(FacebookMessengerException, MessengerException)


def test_the_page_token_is_scrubbed_from_urllib3_debug_logs(api_server, caplog):
    """The warm-up GET carries the token in its query string, which urllib3 logs at DEBUG level."""
    import logging

    caplog.set_level(logging.DEBUG, logger='urllib3')
    secret = 'PAGE-TOKEN/with+odd|chars'
    messenger = FacebookMessenger(secret, api_url=api_server.url)
    api_server.routes[('GET', f'/{messenger.graph_version}/me')] = Reply(200, {'id': '1', 'name': 'Page'})

    messenger.before_send()

    logged = [record.getMessage() for record in caplog.records if record.name.startswith('urllib3')]
    assert any('/me?' in line for line in logged)
    assert not any(secret in line or 'PAGE-TOKEN%2Fwith' in line for line in logged)
