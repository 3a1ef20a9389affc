"""Bundled views: signed unsubscribe and mark-read links, their signals, and every kind of bad link."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles import finders
from django.core import signing
from django.test import Client, override_settings
from django.utils.crypto import salted_hmac

from sitemessage.links import mark_read_signature, unsubscribe_token
from sitemessage.messages.base import MessageBase
from sitemessage.models import Dispatch, Message, Subscription
from sitemessage.signals import (
    sig_mark_read_failed,
    sig_mark_read_success,
    sig_unsubscribe_failed,
    sig_unsubscribe_success,
)
from sitemessage.toolbox import recipients, register_message_types, schedule_messages
from tests.testapp.sitemessages import GreetingMessage

pytestmark = pytest.mark.django_db

BLANK = '/static/img/sitemessage/blank.png'
SIGNALS = {
    'unsubscribe_success': sig_unsubscribe_success,
    'unsubscribe_failed': sig_unsubscribe_failed,
    'mark_read_success': sig_mark_read_success,
    'mark_read_failed': sig_mark_read_failed,
}


class Received(list):
    """Every signal sent, as ``(name, sender, kwargs)``."""

    def names(self):
        return [name for name, _sender, _kwargs in self]


@pytest.fixture
def received():
    log = Received()
    receivers = {}
    for name, signal in SIGNALS.items():

        def receiver(sender, _name=name, **kwargs):
            log.append((_name, sender, kwargs))

        receivers[name] = receiver
        signal.connect(receiver)
    yield log
    for name, signal in SIGNALS.items():
        signal.disconnect(receivers[name])


@pytest.fixture
def csrf_client():
    """A client that enforces CSRF like a browser-less mail client would meet it."""
    return Client(enforce_csrf_checks=True)


def schedule(to, message_type=GreetingMessage):
    message, dispatches = schedule_messages(message_type({'name': 'Ann'}), recipients('fake', to))[0]
    return message, dispatches[0]


def unsubscribe_path(message, dispatch):
    return urlsplit(GreetingMessage.get_unsubscribe_directive(message, dispatch)).path


def mark_read_path(message, dispatch):
    return urlsplit(GreetingMessage.get_mark_read_directive(message, dispatch)).path


def subscribed(*args):
    return Subscription.objects.filter(**Subscription._get_base_kwargs(*args)).exists()


def assert_signal_with_models(received, name, message_type, message, dispatch, request_path):
    ((got_name, sender, kwargs),) = received
    assert (got_name, sender) == (name, message_type)
    assert set(kwargs) == {'signal', 'request', 'message', 'dispatch'}
    assert kwargs['signal'] is SIGNALS[name]
    assert kwargs['request'].path == request_path
    assert isinstance(kwargs['message'], Message) and kwargs['message'].pk == message.pk
    assert isinstance(kwargs['dispatch'], Dispatch) and kwargs['dispatch'].pk == dispatch.pk


def assert_signal_with_raw_ids(received, name, message_id, dispatch_id):
    ((got_name, sender, kwargs),) = received
    assert (got_name, sender) == (name, None)
    assert set(kwargs) == {'signal', 'request', 'message', 'dispatch'}
    assert (kwargs['message'], kwargs['dispatch']) == (message_id, dispatch_id)


# Unsubscribe: GET asks, POST acts --------------------------------------------------------------------


def test_get_of_a_valid_unsubscribe_link_shows_a_confirmation_page_and_changes_nothing(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    path = unsubscribe_path(message, dispatch)

    response = client.get(path)

    assert response.status_code == 200
    assert [t.name for t in response.templates] == ['sitemessage/unsubscribe_confirm.html']
    html = response.content.decode()
    assert f'<form method="post" action="{path}">' in html
    assert '<button type="submit">Unsubscribe</button>' in html
    assert 'csrfmiddlewaretoken' not in html
    assert '“Greetings”' in html
    assert received == []
    assert subscribed('ann', 'greeting', 'fake')


def test_head_of_a_valid_unsubscribe_link_changes_nothing(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')

    assert client.head(unsubscribe_path(message, dispatch)).status_code == 200
    assert received == []
    assert subscribed('ann', 'greeting', 'fake')


def test_submitting_the_confirmation_form_unsubscribes_without_a_csrf_token(csrf_client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    path = unsubscribe_path(message, dispatch)
    page = csrf_client.get(path).content.decode()
    action = page.split('<form method="post" action="', 1)[1].split('"', 1)[0]

    response = csrf_client.post(action)

    assert (response.status_code, response['Location']) == (302, '/')
    assert not subscribed('ann', 'greeting', 'fake')
    assert_signal_with_models(received, 'unsubscribe_success', GreetingMessage, message, dispatch, path)


@pytest.mark.parametrize('content_type', ['application/x-www-form-urlencoded', 'multipart/form-data'])
def test_rfc8058_one_click_post_unsubscribes(csrf_client, received, content_type):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    path = unsubscribe_path(message, dispatch)

    if content_type == 'multipart/form-data':
        response = csrf_client.post(path, {'List-Unsubscribe': 'One-Click'})
    else:
        response = csrf_client.post(path, 'List-Unsubscribe=One-Click', content_type=content_type)

    assert (response.status_code, response['Location']) == (302, '/')
    assert not subscribed('ann', 'greeting', 'fake')
    assert received.names() == ['unsubscribe_success']


@override_settings(SITEMESSAGE_UNSUBSCRIBE_CONFIRM=False)
def test_with_confirmation_off_a_get_unsubscribes_at_once_as_in_1_4_0(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    path = unsubscribe_path(message, dispatch)

    response = client.get(path)

    assert (response.status_code, response['Location']) == (302, '/')
    assert not subscribed('ann', 'greeting', 'fake')
    assert_signal_with_models(received, 'unsubscribe_success', GreetingMessage, message, dispatch, path)


def test_unsubscribing_a_user_removes_only_that_users_subscription_to_that_type_and_messenger(
    client, received, django_user_model
):
    ann = django_user_model.objects.create_user('ann')
    bob = django_user_model.objects.create_user('bob')
    Subscription.create(ann, 'greeting', 'fake')
    Subscription.create(ann, 'plain', 'fake')
    Subscription.create(bob, 'greeting', 'fake')
    message, dispatch = schedule(ann)
    assert dispatch.recipient_id == ann.pk

    client.post(unsubscribe_path(message, dispatch))

    assert sorted(Subscription.objects.values_list('recipient__username', 'message_cls')) == [
        ('ann', 'plain'),
        ('bob', 'greeting'),
    ]


def test_confirmation_page_escapes_the_message_type_title(client):

    class Shady(MessageBase):
        alias = 'shady'
        title = '<script>alert(1)</script>'

    register_message_types(Shady)
    message, dispatch = schedule('ann', Shady)

    html = client.get(unsubscribe_path(message, dispatch)).content.decode()

    assert '<script>' not in html
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in html


# Bad links --------------------------------------------------------------------------------------------
# A link that cannot act says so: the "invalid link" page (a transparent image with the same status for
# mark-read links, which sit in <img> tags), 400 when tampered, 410 when what it named is gone.


def assert_invalid_page(response, status=400):
    assert response.status_code == status
    assert not response.has_header('Location')
    assert [t.name for t in response.templates] == ['sitemessage/link_invalid.html']
    assert 'Invalid or expired link' in response.content.decode()


def assert_invalid_pixel(response, status=400):
    assert response.status_code == status
    assert not response.has_header('Location')
    assert response['Content-Type'] == 'image/png'
    assert response.content == Path(finders.find('img/sitemessage/blank.png')).read_bytes()


def forged_hashes(message, dispatch, other_dispatch):
    valid = GreetingMessage.get_dispatch_hash(dispatch.pk, message.pk)
    token = unsubscribe_path(message, dispatch).split('/')[-2]
    return {
        'zeros': '0' * 40,
        'truncated': valid[:-1],
        'extended': valid + '0',
        'upper-case': valid.upper(),
        'other dispatch': GreetingMessage.get_dispatch_hash(other_dispatch.pk, message.pk),
        'other key': GreetingMessage.get_dispatch_hash(dispatch.pk, message.pk, secret='another-key'),
        'non-ascii': 'ÿ' * 40,
        'token of another dispatch': unsubscribe_path(message, other_dispatch).split('/')[-2],
        'token, data changed': token.replace(token.split(':')[0], token.split(':')[0][:-2] + 'AA', 1),
        'token, signature cut': token[:-1],
        'token signed with another key': signing.Signer(
            key='another-key', salt='sitemessage.links.unsubscribe', algorithm='sha256'
        ).sign_object([message.pk, dispatch.pk, 'greeting', 'fake', None, 'ann']),
        'mark-read signature': mark_read_path(message, dispatch).split('/')[-2],
    }


FORGERIES = [
    'zeros',
    'truncated',
    'extended',
    'upper-case',
    'other dispatch',
    'other key',
    'non-ascii',
    'token of another dispatch',
    'token, data changed',
    'token, signature cut',
    'token signed with another key',
    'mark-read signature',
]


@pytest.mark.parametrize('method', ['get', 'post'])
@pytest.mark.parametrize('forgery', FORGERIES)
def test_unsubscribe_with_a_forged_signature_changes_nothing_and_sends_the_failure_signal(
    client, received, method, forgery
):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatches = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', ['ann', 'bob']))[0]
    dispatch, other = dispatches
    hashed = forged_hashes(message, dispatch, other)[forgery]
    path = f'/messages/unsubscribe/{message.pk}/{dispatch.pk}/{hashed}/'

    response = getattr(client, method)(path)

    assert_invalid_page(response)
    assert subscribed('ann', 'greeting', 'fake')
    assert_signal_with_models(received, 'unsubscribe_failed', GreetingMessage, message, dispatch, path)


@pytest.mark.parametrize('forgery', FORGERIES + ['unsubscribe token'])
def test_mark_read_with_a_forged_signature_changes_nothing_and_sends_the_failure_signal(client, received, forgery):
    message, dispatches = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', ['ann', 'bob']))[0]
    dispatch, other = dispatches
    forgeries = forged_hashes(message, dispatch, other)
    forgeries['unsubscribe token'] = unsubscribe_path(message, dispatch).split('/')[-2]
    forgeries['mark-read signature'] = mark_read_path(message, other).split('/')[-2]  # another dispatch's
    path = f'/messages/ping/{message.pk}/{dispatch.pk}/{forgeries[forgery]}/'

    response = client.get(path)

    assert_invalid_pixel(response)
    assert Dispatch.objects.get(pk=dispatch.pk).read_status == Dispatch.READ_STATUS_UNREAD
    assert_signal_with_models(received, 'mark_read_failed', GreetingMessage, message, dispatch, path)


def test_a_mark_read_link_cannot_unsubscribe_and_an_unsubscribe_link_cannot_mark_read(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    ping, unsubscribe = mark_read_path(message, dispatch), unsubscribe_path(message, dispatch)

    # Whoever sees the pixel's URL (an image proxy, a scanner) gets nothing that unsubscribes.
    assert_invalid_page(client.post(ping.replace('/ping/', '/unsubscribe/')))
    assert_invalid_pixel(client.get(unsubscribe.replace('/unsubscribe/', '/ping/')))

    assert subscribed('ann', 'greeting', 'fake')
    assert Dispatch.objects.get(pk=dispatch.pk).read_status == Dispatch.READ_STATUS_UNREAD
    assert received.names() == ['unsubscribe_failed', 'mark_read_failed']
    # Each works for its own action.
    assert client.get(ping).status_code == 302 and client.post(unsubscribe).status_code == 302
    assert received.names()[2:] == ['mark_read_success', 'unsubscribe_success']


def test_new_signatures_are_per_action_sha256_and_not_the_1_4_0_hash():
    message, dispatch = schedule('ann')
    legacy = GreetingMessage.get_dispatch_hash(dispatch.pk, message.pk)
    ping_signature = mark_read_path(message, dispatch).split('/')[-2]
    token = unsubscribe_path(message, dispatch).split('/')[-2]

    assert len(ping_signature) == 64 and ping_signature != legacy  # HMAC-SHA256, hex
    assert legacy not in token and ping_signature not in token
    assert signing.Signer(salt='sitemessage.links.unsubscribe', algorithm='sha256').unsign_object(token) == [
        message.pk,
        dispatch.pk,
        'greeting',
        'fake',
        None,
        'ann',
    ]


# Links delivered by 1.4.0 (and by 2.0 before per-action signatures) -----------------------------------


def legacy_path(view, message, dispatch):
    return f'/messages/{view}/{message.pk}/{dispatch.pk}/{MessageBase.get_dispatch_hash(dispatch.pk, message.pk)}/'


def test_a_1_4_0_link_still_unsubscribes_and_still_marks_read(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')

    assert client.get(legacy_path('unsubscribe', message, dispatch)).status_code == 200  # the confirmation page
    assert client.post(legacy_path('unsubscribe', message, dispatch))['Location'] == '/'
    assert client.get(legacy_path('ping', message, dispatch))['Location'] == BLANK

    assert not subscribed('ann', 'greeting', 'fake')
    assert Dispatch.objects.get(pk=dispatch.pk).is_read()
    assert received.names() == ['unsubscribe_success', 'mark_read_success']


@override_settings(SITEMESSAGE_ACCEPT_LEGACY_LINK_SIGNATURES=False)
def test_1_4_0_links_are_refused_when_legacy_signatures_are_switched_off(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')

    assert_invalid_page(client.post(legacy_path('unsubscribe', message, dispatch)))
    assert_invalid_pixel(client.get(legacy_path('ping', message, dispatch)))

    assert subscribed('ann', 'greeting', 'fake')
    assert not Dispatch.objects.get(pk=dispatch.pk).is_read()
    assert received.names() == ['unsubscribe_failed', 'mark_read_failed']
    # New links are not affected.
    assert client.post(unsubscribe_path(message, dispatch)).status_code == 302


# After cleanup_sent_messages() -------------------------------------------------------------------------


def sent_and_cleaned_up(to, message_type=GreetingMessage):
    from sitemessage.toolbox import cleanup_sent_messages, send_scheduled_messages

    message, dispatch = schedule(to, message_type)
    paths = {
        'unsubscribe': unsubscribe_path(message, dispatch),
        'ping': mark_read_path(message, dispatch),
        'legacy': legacy_path('unsubscribe', message, dispatch),
    }
    send_scheduled_messages()
    cleanup_sent_messages()
    assert not Dispatch.objects.filter(pk=dispatch.pk).exists()
    return message.pk, dispatch.pk, paths


@pytest.mark.parametrize('recipient', ['user', 'address'])
def test_unsubscribe_link_works_after_its_dispatch_was_cleaned_up(client, received, django_user_model, recipient):
    ann = django_user_model.objects.create_user('ann')
    Subscription.create(ann if recipient == 'user' else 'ann', 'greeting', 'fake')
    Subscription.create('bob', 'greeting', 'fake')
    message_id, dispatch_id, paths = sent_and_cleaned_up(ann if recipient == 'user' else 'ann')

    assert client.get(paths['unsubscribe']).status_code == 200  # still asks first
    response = client.post(paths['unsubscribe'])

    assert (response.status_code, response['Location']) == (302, '/')
    assert list(Subscription.objects.values_list('address', flat=True)) == ['bob']
    ((name, sender, kwargs),) = received
    assert (name, sender) == ('unsubscribe_success', GreetingMessage)
    # The signal gets unsaved stand-ins rebuilt from the link: the rows are gone.
    assert (kwargs['message'].pk, kwargs['message'].cls) == (message_id, 'greeting')
    assert (kwargs['dispatch'].pk, kwargs['dispatch'].messenger) == (dispatch_id, 'fake')
    assert kwargs['dispatch'].recipient_id == (ann.pk if recipient == 'user' else None)


def test_links_that_cannot_act_after_cleanup_say_so(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message_id, dispatch_id, paths = sent_and_cleaned_up('ann')

    # A 1.4.0 link names no recipient; a mark-read link has no dispatch left to mark.
    assert_invalid_page(client.post(paths['legacy']), status=410)
    assert_invalid_pixel(client.get(paths['ping']), status=410)

    assert subscribed('ann', 'greeting', 'fake')
    assert received.names() == ['unsubscribe_failed', 'mark_read_failed']
    assert all(sender is None for _name, sender, _kwargs in received)


def test_unsubscribe_link_of_a_cleaned_up_message_whose_type_was_retired_is_gone(client, received):

    class Retiring(GreetingMessage):
        alias = 'retiring'
        template = 'sitemessage/messages/greeting__fake.tpl'

    register_message_types(Retiring)
    Subscription.create('ann', 'retiring', 'fake')
    _m, _d, paths = sent_and_cleaned_up('ann', Retiring)
    from sitemessage import utils

    del utils._MESSAGES_REGISTRY['retiring']

    assert_invalid_page(client.post(paths['unsubscribe']), status=410)
    assert subscribed('ann', 'retiring', 'fake')
    assert received.names() == ['unsubscribe_failed']


@pytest.mark.parametrize(
    'view, failure, location', [('unsubscribe', 'unsubscribe_failed', '/'), ('ping', 'mark_read_failed', BLANK)]
)
@pytest.mark.parametrize('method', ['get', 'post'])
def test_link_whose_message_id_does_not_match_the_dispatch_fails_with_raw_ids(
    client, received, view, failure, location, method
):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    other_message, _ = schedule('bob')
    # Even correctly signed for the mismatched pair: the dispatch does not belong to that message.
    hashed = GreetingMessage.get_dispatch_hash(dispatch.pk, other_message.pk)

    response = getattr(client, method)(f'/messages/{view}/{other_message.pk}/{dispatch.pk}/{hashed}/')

    assert response.status_code == 400 and not response.has_header('Location')
    assert_signal_with_raw_ids(received, failure, str(other_message.pk), str(dispatch.pk))
    assert subscribed('ann', 'greeting', 'fake')
    assert Dispatch.objects.get(pk=dispatch.pk).read_status == Dispatch.READ_STATUS_UNREAD


@pytest.mark.parametrize(
    'view, failure, location', [('unsubscribe', 'unsubscribe_failed', '/'), ('ping', 'mark_read_failed', BLANK)]
)
@pytest.mark.parametrize('method', ['get', 'post'])
def test_link_to_an_unknown_dispatch_fails_with_raw_ids(client, received, view, failure, location, method):
    message, dispatch = schedule('ann')
    missing = dispatch.pk + 100
    hashed = GreetingMessage.get_dispatch_hash(missing, message.pk)

    response = getattr(client, method)(f'/messages/{view}/{message.pk}/{missing}/{hashed}/')

    assert response.status_code == 410 and not response.has_header('Location')
    assert_signal_with_raw_ids(received, failure, str(message.pk), str(missing))


@pytest.mark.parametrize(
    'view, failure, location', [('unsubscribe', 'unsubscribe_failed', '/'), ('ping', 'mark_read_failed', BLANK)]
)
@pytest.mark.parametrize('method', ['get', 'post'])
def test_link_of_a_message_type_no_longer_registered_fails_with_raw_ids(
    client, received, view, failure, location, method
):
    Subscription.objects.create(address='ann', message_cls='retired', messenger_cls='fake')  # create() refuses it
    message, (dispatch,) = Message.create('retired', {'x': 1}, recipients=recipients('fake', 'ann'))
    hashed = MessageBase.get_dispatch_hash(dispatch.pk, message.pk)

    response = getattr(client, method)(f'/messages/{view}/{message.pk}/{dispatch.pk}/{hashed}/')

    assert response.status_code == 410 and not response.has_header('Location')
    assert_signal_with_raw_ids(received, failure, str(message.pk), str(dispatch.pk))
    assert subscribed('ann', 'retired', 'fake')


OVERFLOWS = ['9' * 20, '9223372036854775808', '2147483648', '9' * 5000]


@pytest.mark.parametrize('view', ['unsubscribe', 'ping'])
@pytest.mark.parametrize('method', ['get', 'post'])
@pytest.mark.parametrize('huge', OVERFLOWS, ids=['20 digits', 'int64+1', 'int32+1', '5000 digits'])
def test_huge_ids_in_a_link_are_refused_never_500(client, received, view, method, huge):
    message, dispatch = schedule('ann')
    paths = [
        f'/messages/{view}/{huge}/{dispatch.pk}/{"0" * 40}/',
        f'/messages/{view}/{message.pk}/{huge}/{"0" * 40}/',
        f'/messages/{view}/{huge}/{huge}/{"0" * 40}/',
    ]

    statuses = [getattr(client, method)(path).status_code for path in paths]

    assert set(statuses) <= {400, 404, 410}
    assert 'unsubscribe_success' not in received.names() and 'mark_read_success' not in received.names()


@pytest.mark.parametrize('view', ['unsubscribe', 'ping'])
@pytest.mark.parametrize('tail', ['x/1/abc/', '1/-1/abc/', '1/1/', '1/1/abc/def/', '1.5/1/abc/', '%00/1/abc/'])
def test_malformed_link_is_a_404(client, view, tail):
    assert client.get(f'/messages/{view}/{tail}').status_code == 404


@pytest.mark.parametrize('method', ['get', 'post'])
def test_non_ascii_digits_in_ids_are_refused_and_change_nothing(client, received, method):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    arabic = str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩')
    for hashed in (
        GreetingMessage.get_dispatch_hash(dispatch.pk, message.pk),
        unsubscribe_path(message, dispatch).split('/')[-2],
    ):
        path = (
            f'/messages/unsubscribe/{str(message.pk).translate(arabic)}/{str(dispatch.pk).translate(arabic)}/{hashed}/'
        )

        response = getattr(client, method)(path)

        assert response.status_code in (400, 404)
    assert subscribed('ann', 'greeting', 'fake')
    assert 'unsubscribe_success' not in received.names()


def hostile_tails(message, dispatch):
    """Path tails (after the view's prefix) that no visitor should be able to turn into a 5xx."""
    m, d = message.pk, dispatch.pk
    token = unsubscribe_path(message, dispatch).split('/')[-2]
    return [
        f'{m}/{d}/{"x" * 10000}/',
        f'{m}/{d}/{":" * 50}/',
        f'{m}/{d}/:/',
        f'{m}/{d}/a:b/',
        f'{m}/{d}/.eJzLSM3JyQcABiwCFQ:abc/',
        f'{m}/{d}/{token}{token}/',
        f'{m}/{d}/{token[1:]}/',
        f'{m}/{d}/%C3%BF%C3%BF:%E2%80%AE/',
        f'{m}/{d}/%F0%9F%92%A9/',
        f'{m}/{d}/%FF%FE/',
        f'{m}/{d}/%0A%0D/',
        f'{m}/{d}/{"%00" * 40}/',
        f"{m}/{d}/' OR 1=1 --/",
        f'{m}/{d}/{"0" * 64}/',
        f'{m}/{d}/{"f" * 40}/',
        f'0/0/{"0" * 40}/',
        f'0/{d}/{token}/',
        f'{m}/0/{token}/',
        f'{"0" * 30}{m}/{d}/{token}/',
        f'{m}/{"9" * 19}/{token}/',
        f'{"9" * 19}/{"9" * 19}/{"0" * 40}/',
        f'{m}/{d}/{"9" * 4301}/',
    ]


@pytest.mark.parametrize('view', ['unsubscribe', 'ping'])
@pytest.mark.parametrize('method', ['get', 'post', 'head', 'put', 'delete', 'options'])
def test_hostile_input_table_never_answers_5xx_and_never_acts(client, received, view, method):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    client.raise_request_exception = False

    statuses = {
        tail: getattr(client, method)(f'/messages/{view}/{tail}').status_code
        for tail in hostile_tails(message, dispatch)
    }

    assert {tail: status for tail, status in statuses.items() if status not in (400, 404, 410)} == {}
    assert subscribed('ann', 'greeting', 'fake')
    assert not Dispatch.objects.get(pk=dispatch.pk).is_read()
    assert not {'unsubscribe_success', 'mark_read_success'} & set(received.names())


def test_a_message_whose_context_cannot_be_read_still_unsubscribes(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    nested = '[' * 100000 + ']' * 100000  # deeper than the JSON parser's recursion limit
    Message.objects.filter(pk=message.pk).update(context=nested)  # stored as it is: not valid to parse

    assert client.post(unsubscribe_path(message, dispatch)).status_code == 302
    assert not subscribed('ann', 'greeting', 'fake')


# Key rotation -----------------------------------------------------------------------------------------


def test_link_signed_before_a_key_rotation_works_while_the_old_key_is_a_fallback(client, received):
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')
    with override_settings(SECRET_KEY='old-key'):
        path = unsubscribe_path(message, dispatch)

    with override_settings(SECRET_KEY='new-key'):
        assert client.post(path).status_code == 400
    assert received.names() == ['unsubscribe_failed']
    assert subscribed('ann', 'greeting', 'fake')

    with override_settings(SECRET_KEY='new-key', SECRET_KEY_FALLBACKS=['older-key', 'old-key']):
        assert client.get(path).status_code == 200  # the confirmation page: the signature is accepted
        assert client.post(path).status_code == 302
    assert received.names() == ['unsubscribe_failed', 'unsubscribe_success']
    assert not subscribed('ann', 'greeting', 'fake')


# Mark read ---------------------------------------------------------------------------------------------


def test_mark_read_get_marks_only_its_dispatch_read_and_redirects_to_the_blank_pixel(client, received):
    message, dispatches = schedule_messages(GreetingMessage({'name': 'Ann'}), recipients('fake', ['ann', 'bob']))[0]
    ann, bob = dispatches
    path = mark_read_path(message, ann)

    response = client.get(path)

    assert (response.status_code, response['Location']) == (302, BLANK)
    assert dict(Dispatch.objects.values_list('address', 'read_status')) == {
        'ann': Dispatch.READ_STATUS_READ,
        'bob': Dispatch.READ_STATUS_UNREAD,
    }
    assert_signal_with_models(received, 'mark_read_success', GreetingMessage, message, ann, path)


@override_settings(STATIC_URL='/assets/')
def test_mark_read_redirect_follows_the_static_files_url(client):
    message, dispatch = schedule('ann')

    assert client.get(mark_read_path(message, dispatch))['Location'] == '/assets/img/sitemessage/blank.png'


PIXEL_TEMPLATE = (  # the recipe of docs/views.rst
    '{% extends "sitemessage/messages/_base.html" %}\n'
    '{% block footer %}{{ block.super }}{% if directive_mark_read %}'
    '<img src="{{ directive_mark_read }}" alt="" width="1" height="1">{% endif %}{% endblock %}\n'
)


@override_settings(
    TEMPLATES=[
        {
            'BACKEND': 'django.template.backends.django.DjangoTemplates',
            'OPTIONS': {
                'loaders': [
                    ('django.template.loaders.locmem.Loader', {'news_with_pixel.html': PIXEL_TEMPLATE}),
                    'django.template.loaders.app_directories.Loader',
                ]
            },
        }
    ]
)
def test_the_default_template_has_no_pixel_but_a_template_can_ask_for_it(client, smtp_server, smtp_messenger):
    from sitemessage.messages.email import EmailHtmlMessage
    from sitemessage.toolbox import send_scheduled_messages

    schedule_messages(EmailHtmlMessage('Plain news', {'contents': 'Hi'}), recipients('smtp', 'a@example.com'))
    schedule_messages(
        EmailHtmlMessage('Tracked news', {'contents': 'Hi'}, template_path='news_with_pixel.html'),
        recipients('smtp', 'b@example.com'),
    )
    send_scheduled_messages()
    mails = {str(mail['To']): mail.get_body(('html',)).get_content() for mail in smtp_server.handler.messages()}

    assert '<img' not in mails['a@example.com']
    pixel = re.search(r'<img src="([^"]+)" alt="" width="1" height="1">', mails['b@example.com']).group(1)
    assert client.get(urlsplit(pixel).path)['Location'] == BLANK
    assert dict(Dispatch.objects.values_list('address', 'read_status')) == {
        'a@example.com': Dispatch.READ_STATUS_UNREAD,
        'b@example.com': Dispatch.READ_STATUS_READ,
    }


def png_pixels(data: bytes):
    """Return ``(width, height, colour type, raw scanlines)`` of a non-interlaced PNG."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n'
    offset, chunks = 8, {}
    while offset < len(data):
        length, kind = struct.unpack('>I4s', data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack('>I', data[offset + 8 + length : offset + 12 + length])[0]
        chunks[kind] = chunks.get(kind, b'') + body
        offset += 12 + length
    width, height, depth, colour_type, _c, _f, interlace = struct.unpack('>IIBBBBB', chunks[b'IHDR'])
    assert (depth, interlace) == (8, 0)
    assert b'IEND' in chunks
    return width, height, colour_type, zlib.decompress(chunks[b'IDAT'])


def test_blank_png_is_a_one_pixel_fully_transparent_image():
    data = Path(finders.find('img/sitemessage/blank.png')).read_bytes()

    width, height, colour_type, raw = png_pixels(data)

    assert (width, height, colour_type) == (1, 1, 6)  # RGBA
    filter_type, alpha = raw[0], raw[4]
    assert (len(raw), filter_type, alpha) == (5, 0, 0)


# Django 6.1 warns when salted_hmac() is called without an algorithm ---------------------------------


def test_links_are_made_and_checked_with_an_explicit_hash_algorithm(client, monkeypatch):
    from django.utils import crypto

    import sitemessage.links
    import sitemessage.messages.base

    calls = []

    def recording_salted_hmac(key_salt, value, secret=None, *, algorithm=None):
        calls.append(algorithm)
        return crypto.salted_hmac(key_salt, value, secret=secret, algorithm=algorithm or 'sha1')

    for module in (sitemessage.links, sitemessage.messages.base):
        monkeypatch.setattr(module, 'salted_hmac', recording_salted_hmac)
    Subscription.create('ann', 'greeting', 'fake')
    message, dispatch = schedule('ann')

    client.get(mark_read_path(message, dispatch))
    client.post(unsubscribe_path(message, dispatch))
    client.get(legacy_path('ping', message, dispatch))

    assert calls and None not in calls
    assert set(calls) == {'sha256', 'sha1'}  # sha1 only for checking 1.4.0 links


@pytest.mark.parametrize(
    'recipient_id, address',
    [
        (None, 'ann@example.com'),
        (7, 'ignored@example.com'),
        (None, 'jürgen@bücher.example'),
        (None, 'quote"back\\slash\ttab\u2028@x.test'),
        (None, ''),
        (2**63 - 1, ''),
    ],
)
def test_unsubscribe_token_is_what_django_signer_makes(settings, recipient_id, address):
    """The token is built without ``Signer`` (it is made per e-mail): it must be Signer's, byte for byte."""
    settings.SECRET_KEY = 'a-key-for-this-test'
    token = unsubscribe_token(12, 345, 'greeting', 'smtp', recipient_id, address)
    expected = signing.Signer(salt='sitemessage.links.unsubscribe', algorithm='sha256').sign_object(
        [12, 345, 'greeting', 'smtp', recipient_id, '' if recipient_id else address]
    )
    assert token == expected
    settings.SECRET_KEY = 'another-key'  # a key change is seen at once: no stale keyed HMAC
    assert unsubscribe_token(12, 345, 'greeting', 'smtp', recipient_id, address) != token


def test_mark_read_signature_is_salted_hmac_sha256(settings):
    settings.SECRET_KEY = 'a-key-for-this-test'
    assert (
        mark_read_signature(3, 4) == salted_hmac('sitemessage.links.mark_read', '3|4', algorithm='sha256').hexdigest()
    )
    assert mark_read_signature(3, 4) == mark_read_signature(3, 4, 'a-key-for-this-test')
