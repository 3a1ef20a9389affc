"""VKontakteMessenger against a local imitation of the VK API (tests/http_api.py).

The imitation speaks the documented format: ``POST /method/<method>`` form-encoded, HTTP 200 with
``{"response": ...}`` on success and ``{"error": {"error_code", "error_msg", "request_params"}}``
on failure, where ``request_params`` echoes the call's parameters, the token among them.
"""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from sitemessage.exceptions import (
    MessengerException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
    TemporaryDeliveryError,
)
from sitemessage.messengers.vkontakte import VKontakteMessenger, VKontakteMessengerException
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.http_api import Reply
from tests.messengers.contract import MessengerContract

TOKEN = 'vk1.a.community0token0never0shown'
WALL_POST, USERS_GET = '/method/wall.post', '/method/users.get'


def vk_error(code, message, request):
    """An error as VK sends it: HTTP 200, and the request's parameters echoed back."""
    params = [{'key': key, 'value': value} for key, value in request.form.items()]
    return Reply(200, {'error': {'error_code': code, 'error_msg': message, 'request_params': params}})


class VKAPI:
    """The imitation's state: posts accepted, and errors scripted per wall owner id."""

    def __init__(self, server):
        self.server = server
        self.posted = []
        self.refuse = {}  # owner_id -> (error_code, error_msg)
        server.routes[('POST', USERS_GET)] = Reply(
            200,
            {
                'response': [
                    {'id': 1, 'first_name': 'Pavel', 'last_name': 'D', 'can_access_closed': True, 'is_closed': False}
                ]
            },
        )
        server.routes[('POST', WALL_POST)] = self.wall_post

    def wall_post(self, request):
        refusal = self.refuse.get(request.form.get('owner_id'))
        if refusal:
            return vk_error(*refusal, request)
        self.posted.append(request.form)
        return Reply(200, {'response': {'post_id': 1000 + len(self.posted)}})

    def fail_warm_up(self, code=5, message='User authorization failed: invalid access_token (4).'):
        self.server.routes[('POST', USERS_GET)] = lambda request: vk_error(code, message, request)


@pytest.fixture
def vkapi(api_server):
    return VKAPI(api_server)


@pytest.fixture
def vk(vkapi):
    messenger = VKontakteMessenger(TOKEN, api_url=vkapi.server.url, timeout=5)
    register_messenger_objects(messenger)
    return messenger


def post_once(text='Hello wall', address='12345'):
    schedule_messages(text, recipients('vk', address))
    send_scheduled_messages()
    return Dispatch.objects.get()


class TestVKontakteContract(MessengerContract):
    secrets = [TOKEN]

    @pytest.fixture(autouse=True)
    def _vkapi(self, vkapi):
        self.vkapi = vkapi

    def make_messenger(self):
        return VKontakteMessenger(TOKEN, api_url=self.vkapi.server.url, timeout=5)

    def good_address(self, index):
        return str(1000 + index)

    def received_texts(self):
        return [form.get('message') or form.get('attachments') for form in self.vkapi.posted]

    def break_warm_up(self):
        self.vkapi.fail_warm_up()

    def fail_permanently(self, address):
        self.vkapi.refuse[address] = (15, 'Access denied: user hid his wall from accessing from outside')

    def fail_temporarily(self, address):
        self.vkapi.refuse[address] = (10, 'Internal server error')


# The wire format ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_wall_post_is_form_encoded_with_owner_version_and_token(vk, api_server):
    assert post_once('Hello wall', '12345').dispatch_status == Dispatch.DISPATCH_STATUS_SENT

    verify, post = api_server.requests
    assert (verify.method, verify.path, verify.form) == ('POST', USERS_GET, {'access_token': TOKEN, 'v': '5.199'})
    assert (post.method, post.path, post.query) == ('POST', WALL_POST, {})
    assert post.headers['Content-Type'] == 'application/x-www-form-urlencoded'
    assert 'Authorization' not in post.headers
    assert post.form == {'owner_id': '12345', 'message': 'Hello wall', 'access_token': TOKEN, 'v': '5.199'}


@pytest.mark.django_db
def test_a_community_wall_gets_from_group(vk, vkapi):
    assert post_once('To the community', '-777').dispatch_status == Dispatch.DISPATCH_STATUS_SENT

    assert vkapi.posted == [
        {'owner_id': '-777', 'message': 'To the community', 'from_group': '1', 'access_token': TOKEN, 'v': '5.199'}
    ]


def test_from_group_can_be_forced_either_way(vkapi):
    url = vkapi.server.url
    VKontakteMessenger(TOKEN, api_url=url, from_group=False).send_test_message('-777', 'as the user')
    VKontakteMessenger(TOKEN, api_url=url, from_group=True).send_test_message('12345', 'as a group')

    assert [form.get('from_group') for form in vkapi.posted] == [None, '1']


@pytest.mark.django_db
def test_a_text_that_is_one_url_is_posted_as_attachment(vk, vkapi):
    schedule_messages('https://example.com/news/1', recipients('vk', '-777'))
    schedule_messages('https://example.com/news/2 is out', recipients('vk', '-777'))
    send_scheduled_messages()

    assert [(form.get('attachments'), form.get('message')) for form in vkapi.posted] == [
        ('https://example.com/news/1', None),
        (None, 'https://example.com/news/2 is out'),
    ]


def test_defaults_speak_to_the_real_api_with_version_5_199():
    messenger = VKontakteMessenger('token')
    assert (messenger.alias, str(messenger.title), messenger.address_attr) == ('vk', 'VKontakte', 'vkontakte')
    assert messenger.api_url == 'https://api.vk.com'
    assert messenger.api_version == '5.199'
    assert messenger.access_token == 'token' and messenger.from_group is None and messenger.proxy is None


def test_api_version_comes_from_the_constructor_then_the_setting(vkapi):
    with override_settings(SITEMESSAGE_VKONTAKTE_API_VERSION='5.200'):
        VKontakteMessenger(TOKEN, api_url=vkapi.server.url).send_test_message('1', 'via setting')
        VKontakteMessenger(TOKEN, api_url=vkapi.server.url, api_version='5.131').send_test_message('1', 'via arg')

    assert [request.form['v'] for request in vkapi.server.requests] == ['5.200', '5.200', '5.131', '5.131']


def test_probe_posts_to_the_given_wall_and_returns_the_post_id(vk, vkapi):
    # 1.4.0 dropped ``to`` here, so probes went to the token owner's own wall.
    assert vk.send_test_message('-42', 'probe') == 1001
    assert vkapi.posted[0]['owner_id'] == '-42'


def test_an_empty_address_posts_to_the_token_owners_wall(vk, vkapi):
    vk.send_test_message('', 'my own wall')
    assert vkapi.posted == [{'message': 'my own wall', 'access_token': TOKEN, 'v': '5.199'}]


@pytest.mark.django_db
def test_an_address_that_is_not_an_owner_id_fails_without_a_request(vk, vkapi):
    dispatch = post_once('Hi', 'durov')

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_FAILED
    assert vkapi.server.find(WALL_POST) == []
    assert "got 'durov'" in DispatchError.objects.get().error_log


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    'code, message, status',
    [
        (6, 'Too many requests per second', Dispatch.DISPATCH_STATUS_ERROR),
        (9, 'Flood control: too much messages sent to user', Dispatch.DISPATCH_STATUS_ERROR),
        (10, 'Internal server error', Dispatch.DISPATCH_STATUS_ERROR),
        (1, 'Unknown error occurred', Dispatch.DISPATCH_STATUS_ERROR),
        (15, 'Access denied: user hid his wall from accessing from outside', Dispatch.DISPATCH_STATUS_FAILED),
        (214, 'Access to adding post denied: you can only add posts to your own wall', Dispatch.DISPATCH_STATUS_FAILED),
        (
            100,
            'One of the parameters specified was missing or invalid: owner_id not integer',
            Dispatch.DISPATCH_STATUS_FAILED,
        ),
        (113, 'Invalid user id', Dispatch.DISPATCH_STATUS_FAILED),
        (222, 'Hyperlinks are forbidden', Dispatch.DISPATCH_STATUS_FAILED),
    ],
)
def test_vk_errors_are_retried_or_failed_by_code(vk, vkapi, code, message, status):
    vkapi.refuse['12345'] = (code, message)

    dispatch = post_once()

    assert dispatch.dispatch_status == status
    log = DispatchError.objects.get().error_log
    assert log == f'VKontakte: error {code}: {message}'


@pytest.mark.django_db
def test_too_many_requests_per_second_waits_a_second_at_least(vk, vkapi):
    vkapi.refuse['12345'] = (6, 'Too many requests per second')

    dispatch = post_once()

    assert dispatch.next_attempt_at >= timezone.now() + timedelta(seconds=0.5)


@pytest.mark.django_db
def test_a_token_rejected_on_a_post_is_reported_clearly_and_retried(vk, vkapi):
    vkapi.refuse['12345'] = (5, 'User authorization failed: access_token has expired.')

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert DispatchError.objects.get().error_log == (
        'VKontakte access token invalid or expired: error 5: User authorization failed: access_token has expired.'
    )


@pytest.mark.django_db
def test_a_rejected_token_fails_the_warm_up_and_nothing_is_posted(vk, vkapi):
    vkapi.fail_warm_up()

    dispatch = post_once()

    assert dispatch.dispatch_status == Dispatch.DISPATCH_STATUS_ERROR
    assert vkapi.server.find(WALL_POST) == []
    assert DispatchError.objects.get().error_log == (
        'Messenger warm-up failed: VKontakte access token invalid or expired: '
        'error 5: User authorization failed: invalid access_token (4).'
    )


@pytest.mark.django_db
def test_other_errors_of_the_verification_call_do_not_stop_posting(vk, vkapi):
    vkapi.fail_warm_up(27, 'Group authorization failed: method is unavailable with group auth.')

    assert post_once().dispatch_status == Dispatch.DISPATCH_STATUS_SENT


@pytest.mark.django_db
def test_the_token_echoed_in_request_params_never_reaches_error_texts(vk, vkapi):
    vkapi.refuse['12345'] = (15, f'Access denied for token {TOKEN}')  # harsher than VK: echoed in the text too

    post_once()

    log = DispatchError.objects.get().error_log
    assert log == 'VKontakte: error 15: Access denied for token ***'
    with pytest.raises(VKontakteMessengerException) as info:
        vk.send_test_message('12345', 'probe')
    assert TOKEN not in str(info.value)


@pytest.mark.django_db
def test_http_server_errors_and_timeouts_are_retried(vkapi):
    register_messenger_objects(VKontakteMessenger(TOKEN, api_url=vkapi.server.url, timeout=0.2))
    vkapi.server.routes[('POST', WALL_POST)] = [Reply(503, 'Service Unavailable'), Reply(200, {}, delay=1)]
    schedule_messages('Hi', recipients('vk', ['1', '2']))

    send_scheduled_messages()

    assert list(Dispatch.objects.order_by('pk').values_list('dispatch_status', flat=True)) == [
        Dispatch.DISPATCH_STATUS_ERROR,
        Dispatch.DISPATCH_STATUS_ERROR,
    ]
    logs = list(DispatchError.objects.order_by('pk').values_list('error_log', flat=True))
    assert logs[0] == 'VKontakte: HTTP 503: Service Unavailable' and 'Timeout' in logs[1]


def test_api_errors_raise_vk_exceptions_that_say_if_retrying_helps(vk, vkapi):
    vkapi.refuse['1'] = (214, 'Access to adding post denied')
    vkapi.refuse['2'] = (9, 'Flood control')

    with pytest.raises(VKontakteMessengerException) as permanent:
        vk.send_test_message('1', 'one')
    with pytest.raises(VKontakteMessengerException) as temporary:
        vk.send_test_message('2', 'two')

    assert isinstance(permanent.value, PermanentDeliveryError) and permanent.value.code == 214
    assert isinstance(temporary.value, TemporaryDeliveryError) and temporary.value.code == 9


def test_missing_requests_names_the_pip_extra(monkeypatch):
    monkeypatch.setitem(__import__('sys').modules, 'requests', None)

    with pytest.raises(SiteMessageConfigurationError, match=r'django-sitemessage\[vkontakte\]'):
        VKontakteMessenger('token')


# Tokens -----------------------------------------------------------------------------------------


def test_get_access_token_opens_and_returns_the_authorize_url(monkeypatch):
    opened = []
    monkeypatch.setattr('webbrowser.open', opened.append)

    url = VKontakteMessenger.get_access_token(app_id='5123456')

    assert url == (
        'https://oauth.vk.com/authorize?client_id=5123456&scope=wall,offline&display=page'
        '&response_type=token&v=5.199&redirect_uri=https://oauth.vk.com/blank.html'
    )
    assert opened == [url]
    with pytest.raises(TypeError):
        VKontakteMessenger.get_access_token('5123456')


# Probing ------------------------------------------------------------------------------------------


def test_probe_command_posts_to_the_given_wall(vk, vkapi):
    out = StringIO()
    call_command('sitemessage_probe', 'vk', '--to', '-777', stdout=out)

    assert 'Probing function result: 1001.' in out.getvalue()
    assert vkapi.posted[0]['owner_id'] == '-777' and vkapi.posted[0]['message'] == 'Test message from sitemessages.'


def test_probe_command_reports_vks_own_error_text(vk, vkapi):
    vkapi.refuse['-777'] = (214, 'Access to adding post denied: access to the wall is closed')
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'vk', '--to', '-777', stdout=out, stderr=err)

    assert 'Error on probe: VKontakte: error 214: Access to adding post denied: access to the wall is closed' in (
        err.getvalue()
    )
    assert TOKEN not in err.getvalue() + out.getvalue()


def test_probe_command_reports_a_rejected_token(vk, vkapi):
    vkapi.fail_warm_up()
    err = StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'vk', '--to', '-777', stdout=StringIO(), stderr=err)

    assert 'Error on probe: VKontakte access token invalid or expired: error 5' in err.getvalue()
    assert TOKEN not in err.getvalue()


def test_vk_errors_are_messenger_errors():
    assert issubclass(VKontakteMessengerException, MessengerException)
