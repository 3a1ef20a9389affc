"""The async API: awaited from async views (through Django's ASGI handler), it stores what the sync one does."""

from __future__ import annotations

import inspect

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, override_settings

from sitemessage import shortcuts, toolbox
from sitemessage.headers import UnsafeHeaderValueError
from sitemessage.models import Dispatch, Message
from sitemessage.toolbox import recipients, send_scheduled_messages

pytestmark = pytest.mark.django_db

# Every scheduling shortcut (and the two toolbox functions) must have its twin.
TWINS = [(toolbox, 'schedule_messages'), (toolbox, 'send_test_message')] + [
    (shortcuts, name) for name in shortcuts.__all__ if name.startswith('schedule_') and name != 'schedule_messages'
]


@pytest.mark.parametrize(('module', 'name'), TWINS, ids=[name for _module, name in TWINS])
def test_each_documented_function_has_an_exported_async_twin_with_its_signature(module, name):
    assert len(TWINS) == 8  # schedule_email, _jabber_message, _tweet, _telegram_, _facebook_, _vkontakte_message
    twin = getattr(module, f'a{name}')

    assert f'a{name}' in module.__all__
    assert inspect.iscoroutinefunction(twin)
    assert inspect.signature(twin) == inspect.signature(getattr(module, name))


def test_an_async_view_schedules_through_the_asgi_handler_and_a_send_run_delivers(smtp_server, smtp_messenger):
    with override_settings(LANGUAGES=[('en', 'English'), ('ru', 'Russian')]):
        response = async_to_sync(AsyncClient().get)('/welcome/', {'to': 'new@example.com'})

    assert response.status_code == 200, response.content
    assert response.json() == {'scheduled': 'new@example.com'}
    dispatch = Dispatch.objects.select_related('message').get()
    assert (dispatch.message.cls, dispatch.address, dispatch.language) == ('email_plain', 'new@example.com', 'ru')

    send_scheduled_messages()

    [mail] = smtp_server.handler.messages()
    assert (str(mail['To']), str(mail['Subject'])) == ('new@example.com', 'Welcome')
    assert mail.get_content().strip() == 'Welcome aboard!'
    assert Dispatch.objects.get().dispatch_status == Dispatch.DISPATCH_STATUS_SENT


def test_aschedule_messages_returns_what_schedule_messages_returns_and_forwards_keywords(fake_messenger):
    [(message, dispatches)] = async_to_sync(toolbox.aschedule_messages)(
        'hello', recipients('fake', ['a', 'b']), priority=3, language='en'
    )

    assert Message.objects.get() == message and message.priority == 3
    assert [(d.address, d.language) for d in Dispatch.objects.order_by('pk')] == [('a', 'en'), ('b', 'en')]
    assert sorted(d.pk for d in dispatches) == sorted(Dispatch.objects.values_list('pk', flat=True))


def test_an_async_twin_raises_what_the_sync_function_raises_and_stores_nothing(smtp_messenger):
    with pytest.raises(UnsafeHeaderValueError, match='Bcc'):
        async_to_sync(shortcuts.aschedule_email)('hi', 'a@example.com\nBcc: b@example.com')
    with pytest.raises(TypeError, match="unexpected keyword argument 'sent_at'"):  # forwarded, so refused there
        async_to_sync(shortcuts.aschedule_email)('hi', 'a@example.com', sent_at='tomorrow')

    assert not Message.objects.exists()


def test_asend_test_message_sends_right_away(smtp_server, smtp_messenger):
    async_to_sync(toolbox.asend_test_message)('smtp', to='admin@example.com')

    [mail] = smtp_server.handler.messages()
    assert str(mail['To']) == 'admin@example.com'
    assert 'Test message from sitemessages.' in mail.get_body(preferencelist=('plain',)).get_content()


def test_the_documented_aschedule_messages_view_stores_one_message_with_its_dispatches(smtp_server, smtp_messenger):
    response = async_to_sync(AsyncClient().get)('/notify-team/')

    assert response.json() == {'message': Message.objects.get().pk, 'dispatches': 2}

    send_scheduled_messages()

    assert sorted(str(mail['To']) for mail in smtp_server.handler.messages()) == ['dev@example.com', 'ops@example.com']
