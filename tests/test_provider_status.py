"""Provider message ids on dispatches, AnymailMessenger, and ESP delivery webhooks (through anymail) updating them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging

import pytest
from django.core import mail
from django.test.utils import override_settings
from django.urls import reverse

from sitemessage.messages.email import EmailHtmlMessage
from sitemessage.messengers.base_http import RequestsMessengerBase
from sitemessage.messengers.telegram import TelegramMessenger
from sitemessage.models import Dispatch, DispatchError, Suppression
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects
from tests.http_api import Reply

pytestmark = pytest.mark.django_db

SENT, FAILED = Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_FAILED
ANYMAIL_TEST_BACKEND = 'anymail.backends.test.EmailBackend'
ESP_BACKEND = 'tests.anymail_backend.EmailBackend'  # anymail's test backend answering with Message-ID-like ids


def dispatch_to(address):
    return Dispatch.objects.filter(address=address).latest('pk')


# Ids recorded by the built-in messengers ---------------------------------------------------------------


def test_the_message_id_that_reached_the_smtp_server_is_stored_on_its_dispatch(smtp_messenger, smtp_server):
    schedule_messages('Plain text', recipients('smtp', ['ann@example.com', 'bob@example.com']))
    schedule_messages(EmailHtmlMessage('Hi', '<b>HTML</b>'), recipients('smtp', ['cat@example.com']))

    send_scheduled_messages()

    arrived = {str(msg['To']): str(msg['Message-ID']) for msg in smtp_server.handler.messages()}
    stored = dict(Dispatch.objects.values_list('address', 'provider_message_id'))
    assert arrived == stored
    assert len(set(stored.values())) == 3 and all(value.startswith('<') for value in stored.values())


@override_settings(EMAIL_BACKEND='sitemessage.backends.EmailBackend')
def test_the_message_id_of_an_e_mail_queued_by_send_mail_is_stored_as_it_arrived(smtp_messenger, smtp_server):
    from django.core.mail import send_mail

    send_mail('Hi', 'text', 'from@example.com', ['ann@example.com'])
    send_scheduled_messages()

    (arrived,) = smtp_server.handler.messages()
    assert Dispatch.objects.get().provider_message_id == str(arrived['Message-ID'])


def test_a_refused_e_mail_keeps_no_message_id(smtp_messenger, smtp_server):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'
    schedule_messages('Hi', recipients('smtp', ['gone@example.com']))

    send_scheduled_messages()

    assert Dispatch.objects.values_list('dispatch_status', 'provider_message_id').get() == (FAILED, None)


def test_the_telegram_message_id_is_stored_on_its_dispatch(api_server):
    token = '123:token'
    sent = []

    def send_message(request):
        sent.append(request.json)
        result = {'message_id': 7000 + len(sent), 'date': 1700000000, 'chat': {'id': request.json['chat_id']}}
        return Reply(200, {'ok': True, 'result': result})

    api_server.routes[('POST', f'/bot{token}/getMe')] = Reply(200, {'ok': True, 'result': {'id': 1, 'is_bot': True}})
    api_server.routes[('POST', f'/bot{token}/sendMessage')] = send_message
    register_messenger_objects(TelegramMessenger(token, api_url=api_server.url, timeout=5))
    schedule_messages('Hi', recipients('telegram', ['111', '222']))

    send_scheduled_messages()

    assert {str(body['chat_id']): 7000 + n for n, body in enumerate(sent, 1)} == {
        address: int(message_id)
        for address, message_id in Dispatch.objects.values_list('address', 'provider_message_id')
    }


@override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=1)
def test_a_chat_that_blocked_the_bot_is_suppressed(api_server):
    token = '123:token'
    api_server.routes[('POST', f'/bot{token}/getMe')] = Reply(200, {'ok': True, 'result': {'id': 1, 'is_bot': True}})
    api_server.routes[('POST', f'/bot{token}/sendMessage')] = Reply(
        403, {'ok': False, 'error_code': 403, 'description': 'Forbidden: bot was blocked by the user'}
    )
    register_messenger_objects(TelegramMessenger(token, api_url=api_server.url, timeout=5))
    schedule_messages('Hi', recipients('telegram', ['111']))

    send_scheduled_messages()

    entry = Suppression.objects.get()
    assert (entry.messenger, entry.address, entry.active, entry.reason) == ('telegram', '111', True, 'bounce')
    assert 'blocked' in entry.note and token not in entry.note


@pytest.mark.parametrize(
    'result, expected',
    [({'id': '1234_5678'}, '1234_5678'), ('1234_5678', '1234_5678'), (42, 42), (True, None), ([1], None), (None, None)],
)
def test_http_messengers_take_a_plain_id_or_the_id_of_a_json_object(result, expected):
    assert RequestsMessengerBase().provider_id(result) == expected


# AnymailMessenger -------------------------------------------------------------------------------------


@pytest.fixture
def anymail_messenger():
    pytest.importorskip('anymail')
    from sitemessage.messengers.anymail import AnymailMessenger

    mail.outbox = []
    messenger = AnymailMessenger('robot@example.com', backend=ESP_BACKEND)
    register_messenger_objects(messenger)
    yield messenger
    from tests import anymail_backend

    anymail_backend.REFUSE.clear()


def test_anymail_messenger_sends_through_anymail_and_keeps_the_esp_message_id(anymail_messenger):
    schedule_messages(
        EmailHtmlMessage('Order paid', '<p>Thank <b>you</b></p>'), recipients('anymail', ['ann@example.com'])
    )

    report = send_scheduled_messages()

    (email,) = mail.outbox
    dispatch = Dispatch.objects.get()
    assert report.sent == 1 and dispatch.dispatch_status == SENT
    assert dispatch.provider_message_id == email.anymail_status.message_id
    assert (email.subject, email.to, email.from_email) == ('Order paid', ['ann@example.com'], 'robot@example.com')
    assert email.alternatives[0][0] == '<p>Thank <b>you</b></p>' and 'Thank you' in email.body


def test_anymail_messenger_works_with_anymails_own_test_backend(settings):
    pytest.importorskip('anymail')
    from sitemessage.messengers.anymail import AnymailMessenger

    settings.SITEMESSAGE_ANYMAIL_BACKEND = ANYMAIL_TEST_BACKEND
    mail.outbox = []
    register_messenger_objects(AnymailMessenger())
    schedule_messages('Hi', recipients('anymail', ['ann@example.com', 'bob@example.com']))

    send_scheduled_messages()

    ids = {email.to[0]: str(email.anymail_status.message_id) for email in mail.outbox}
    assert ids == dict(Dispatch.objects.values_list('address', 'provider_message_id'))
    assert mail.outbox[0].from_email == 'robot@example.com'  # DEFAULT_FROM_EMAIL


@override_settings(SITEMESSAGE_SUPPRESS_AFTER_FAILURES=1)
def test_an_address_the_esp_rejects_fails_and_is_suppressed(anymail_messenger):
    from tests import anymail_backend

    anymail_backend.REFUSE['gone@example.com'] = 'rejected'
    schedule_messages('Hi', recipients('anymail', ['gone@example.com', 'ann@example.com']))

    send_scheduled_messages()

    assert dispatch_to('gone@example.com').dispatch_status == FAILED
    assert dispatch_to('ann@example.com').dispatch_status == SENT
    assert Suppression.objects.filter(address='gone@example.com', messenger='anymail', active=True).exists()


def test_anymail_messenger_without_a_backend_names_the_setting():
    pytest.importorskip('anymail')
    from sitemessage.exceptions import SiteMessageConfigurationError
    from sitemessage.messengers.anymail import AnymailMessenger

    with pytest.raises(SiteMessageConfigurationError, match='SITEMESSAGE_ANYMAIL_BACKEND'):
        AnymailMessenger().before_send()
    with pytest.raises(SiteMessageConfigurationError, match='queues the e-mail again'):
        AnymailMessenger(backend='sitemessage.backends.EmailBackend').before_send()


# ESP webhooks -----------------------------------------------------------------------------------------

AUTH = {'HTTP_AUTHORIZATION': 'Basic ' + base64.b64encode(b'hook:s3cret').decode()}


def sent_through_anymail(*addresses):
    schedule_messages('Hi', recipients('anymail', list(addresses)))
    send_scheduled_messages()
    return [dispatch_to(address) for address in addresses]


def postmark(client, record, **extra):
    """POST a Postmark tracking webhook (https://postmarkapp.com/developer/webhooks/webhooks-overview)."""
    return client.post(
        reverse('anymail:postmark_tracking_webhook'), data=json.dumps(record), content_type='application/json', **extra
    )


def postmark_delivery(message_id, email):
    return {
        'RecordType': 'Delivery',
        'ServerID': 23,
        'MessageStream': 'outbound',
        'MessageID': message_id,
        'Recipient': email,
        'Tag': '',
        'DeliveredAt': '2026-12-01T08:30:00Z',
        'Details': 'Test delivery webhook details',
        'Metadata': {},
    }


def postmark_bounce(message_id, email, bounce_type='HardBounce'):
    return {
        'RecordType': 'Bounce',
        'ID': 4323372036854775807,
        'Type': bounce_type,
        'TypeCode': 1,
        'Name': 'Hard bounce',
        'MessageID': message_id,
        'MessageStream': 'outbound',
        'Description': 'The server was unable to deliver your message (ex: unknown user, mailbox not found).',
        'Details': 'smtp;550 5.1.1 The email account that you tried to reach does not exist.',
        'Email': email,
        'From': 'robot@example.com',
        'BouncedAt': '2026-12-01T08:40:00Z',
        'Inactive': True,
        'CanActivate': True,
        'Subject': 'Hi',
        'Metadata': {},
    }


def mailgun(client, event_data, key='mailgun-signing-key'):
    """POST a Mailgun tracking webhook (https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/)."""
    timestamp, token = '1764578400', 'a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0'
    signature = hmac.new(key.encode(), f'{timestamp}{token}'.encode(), hashlib.sha256).hexdigest()
    body = {'signature': {'timestamp': timestamp, 'token': token, 'signature': signature}, 'event-data': event_data}
    return client.post(
        reverse('anymail:mailgun_tracking_webhook'), data=json.dumps(body), content_type='application/json', **AUTH
    )


def mailgun_event(event, message_id, email, **extra):
    return {
        'id': 'CPgfbmQMTCKtHW6uIWtuVe',
        'event': event,
        'timestamp': 1764578400.5,
        'log-level': 'info',
        'recipient': email,
        'recipient-domain': email.partition('@')[2],
        'message': {'headers': {'message-id': message_id.strip('<>'), 'to': email, 'subject': 'Hi'}},
        'tags': [],
        'user-variables': {},
        **extra,
    }


def test_a_postmark_delivery_then_bounce_update_the_dispatch_and_suppress_its_address(client, anymail_messenger):
    dispatch, other = sent_through_anymail('gone@example.com', 'ann@example.com')

    assert (
        postmark(client, postmark_delivery(dispatch.provider_message_id, 'gone@example.com'), **AUTH).status_code == 200
    )
    dispatch.refresh_from_db()
    assert dispatch.provider_status == Dispatch.PROVIDER_STATUS_DELIVERED
    assert dispatch.provider_status_time.isoformat() == '2026-12-01T08:30:00+00:00'

    assert (
        postmark(client, postmark_bounce(dispatch.provider_message_id, 'gone@example.com'), **AUTH).status_code == 200
    )
    dispatch.refresh_from_db()
    assert dispatch.provider_status == Dispatch.PROVIDER_STATUS_BOUNCED
    entry = Suppression.objects.get()
    assert (entry.address, entry.messenger, entry.reason, entry.active) == (
        'gone@example.com',
        'anymail',
        'bounce',
        True,
    )
    other.refresh_from_db()
    assert other.provider_status is None

    schedule_messages('Again', recipients('anymail', ['gone@example.com']))  # never attempted again
    assert dispatch_to('gone@example.com').dispatch_status == FAILED
    assert (
        DispatchError.objects.filter(dispatch=dispatch_to('gone@example.com')).get().error_log == 'suppressed: bounce'
    )


def test_mailgun_opens_clicks_and_complaints_update_the_dispatch_in_rank_order(client, anymail_messenger):
    (dispatch,) = sent_through_anymail('ann@example.com')
    message_id = dispatch.provider_message_id

    def status_after(event, **extra):
        assert mailgun(client, mailgun_event(event, message_id, 'ann@example.com', **extra)).status_code == 200
        dispatch.refresh_from_db()
        return dispatch.get_provider_status_display()

    assert status_after('clicked', url='https://example.com/') == 'Clicked'
    assert status_after('opened') == 'Clicked'  # a late open does not hide the click
    assert not Suppression.objects.exists()
    assert status_after('complained') == 'Complained'
    assert Suppression.objects.get().reason == Suppression.REASON_COMPLAINT


def test_a_replayed_event_changes_nothing_and_is_logged(client, anymail_messenger, caplog):
    (dispatch,) = sent_through_anymail('ann@example.com')
    payload = postmark_delivery(dispatch.provider_message_id, 'ann@example.com')
    postmark(client, payload, **AUTH)
    first = Dispatch.objects.values_list('provider_status', 'provider_status_time').get()

    with caplog.at_level(logging.INFO, logger='sitemessage.tracking'):
        assert postmark(client, dict(payload, DeliveredAt='2026-12-01T09:00:00Z'), **AUTH).status_code == 200

    assert Dispatch.objects.values_list('provider_status', 'provider_status_time').get() == first
    assert 'replayed' in caplog.text


def test_events_for_unknown_message_ids_change_nothing_and_are_logged(client, anymail_messenger, caplog):
    (dispatch,) = sent_through_anymail('ann@example.com')

    with caplog.at_level(logging.INFO, logger='sitemessage.tracking'):
        responses = [
            postmark(client, postmark_bounce('883953f4-6105-42a2-a16a-77a8eac79483', 'ann@example.com'), **AUTH),
            mailgun(
                client,
                mailgun_event('failed', '<other-project@mg.example.org>', 'ann@example.com', severity='permanent'),
            ),
            postmark(client, postmark_bounce('', 'ann@example.com'), **AUTH),
        ]

    assert [response.status_code for response in responses] == [200, 200, 200]
    dispatch.refresh_from_db()
    assert dispatch.provider_status is None and not Suppression.objects.exists()
    assert caplog.text.count('no dispatch has it') == 2 and 'has no message id' in caplog.text


def test_an_event_for_a_dispatch_that_is_not_sent_changes_nothing(client, anymail_messenger):
    (dispatch,) = sent_through_anymail('ann@example.com')
    Dispatch.objects.filter(pk=dispatch.pk).update(dispatch_status=Dispatch.DISPATCH_STATUS_PENDING)

    postmark(client, postmark_bounce(dispatch.provider_message_id, 'ann@example.com'), **AUTH)

    dispatch.refresh_from_db()
    assert dispatch.provider_status is None and not Suppression.objects.exists()


@pytest.mark.parametrize(
    'body',
    [b'{"RecordType": "Delivery", "MessageID": ', b'\xff\xfe not utf-8', b'[1, 2', b''],
    ids=['truncated-json', 'not-utf8', 'unclosed-list', 'empty'],
)
def test_a_malformed_webhook_body_is_refused_with_400_and_logged(client, anymail_messenger, caplog, body):
    (dispatch,) = sent_through_anymail('ann@example.com')

    with caplog.at_level(logging.WARNING, logger='sitemessage.tracking'):
        response = client.post(
            reverse('anymail:postmark_tracking_webhook'), data=body, content_type='application/json', **AUTH
        )

    assert response.status_code == 400
    assert 'cannot be parsed' in caplog.text
    dispatch.refresh_from_db()
    assert dispatch.provider_status is None


def test_a_webhook_without_the_secret_or_with_a_bad_signature_is_refused(client, anymail_messenger):
    (dispatch,) = sent_through_anymail('ann@example.com')

    unauthenticated = postmark(client, postmark_bounce(dispatch.provider_message_id, 'ann@example.com'))
    forged = mailgun(client, mailgun_event('complained', dispatch.provider_message_id, 'ann@example.com'), key='guess')

    assert (unauthenticated.status_code, forged.status_code) == (400, 400)
    dispatch.refresh_from_db()
    assert dispatch.provider_status is None and not Suppression.objects.exists()


def test_the_admin_shows_and_filters_dispatches_by_provider_status_and_id(admin_client, anymail_messenger):
    delivered, bounced = sent_through_anymail('ann@example.com', 'gone@example.com')
    Dispatch.objects.filter(pk=bounced.pk).update(provider_status=Dispatch.PROVIDER_STATUS_BOUNCED)
    url = reverse('admin:sitemessage_dispatch_changelist')

    def listed(**query):
        return [d.address for d in admin_client.get(url, query).context['cl'].result_list]

    assert listed(provider_status=Dispatch.PROVIDER_STATUS_BOUNCED) == ['gone@example.com']
    assert listed(q=delivered.provider_message_id) == ['ann@example.com']
    page = admin_client.get(reverse('admin:sitemessage_dispatch_change', args=[delivered.pk])).content.decode()
    assert delivered.provider_message_id.strip('<>') in page


def test_probing_anymail_sends_through_the_backend_and_prints_the_esp_message_id(anymail_messenger):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command('sitemessage_probe', 'anymail', to='ann@example.com', stdout=out)

    (email,) = mail.outbox
    assert email.to == ['ann@example.com']
    assert f'Probing function result: {email.anymail_status.message_id}.' in out.getvalue()


def test_a_custom_messenger_passes_the_provider_id_to_mark_sent(fake_messenger, monkeypatch):
    # The docs' example (docs/provider-status.rst): self.mark_sent(dispatch, provider_id=reply['id']).
    def send(message_cls, message_model, dispatch_models):
        for dispatch in dispatch_models:
            fake_messenger.mark_sent(dispatch, provider_id={'id': f'post-{dispatch.address}'}['id'])

    monkeypatch.setattr(fake_messenger, 'send', send)  # the registered instance is shared by every test
    schedule_messages('Hi', recipients('fake', ['ann', 'bob']))

    send_scheduled_messages()

    assert dict(Dispatch.objects.values_list('address', 'provider_message_id')) == {
        'ann': 'post-ann',
        'bob': 'post-bob',
    }


def test_record_event_applies_an_anymail_event_from_code(anymail_messenger):
    from anymail.signals import AnymailTrackingEvent

    from sitemessage.tracking import record_event

    (dispatch,) = sent_through_anymail('ann@example.com')
    event = AnymailTrackingEvent(event_type='delivered', message_id=dispatch.provider_message_id)

    assert record_event(event, 'Postmark') == dispatch
    assert record_event(event, 'Postmark') is None  # replayed
    assert record_event(AnymailTrackingEvent(event_type='queued', message_id=dispatch.provider_message_id)) is None
    dispatch.refresh_from_db()
    assert dispatch.provider_status == Dispatch.PROVIDER_STATUS_DELIVERED
