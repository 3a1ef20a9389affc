"""The public facade of sitemessage: scheduling, sending, preferences, maintenance, registries."""

from __future__ import annotations

from typing import Any, Optional

from .async_api import aschedule_messages, async_twin
from .compat import TypeUser
from .delivery.run import SendReport, prepare_dispatches, send_scheduled_messages
from .exceptions import UnknownMessageTypeError, UnknownMessengerError
from .maintenance import check_undelivered, cleanup_sent_messages
from .messages import register_builtin_message_types
from .messages.base import MessageBase
from .messages.plain import PlainTextMessage
from .models import Dispatch, Message, MessageTuple, Subscription
from .preferences import (
    _ALIAS_SEP,
    _PREF_POST_KEY,
    get_user_preferences_for_ui,
    set_user_preferences_from_request,
)
from .recipients import Recipient, is_iterable, recipients
from .registry import (
    get_message_type_for_app,
    get_registered_message_type,
    get_registered_message_types,
    get_registered_messenger_object,
    get_registered_messenger_objects,
    import_project_sitemessage_modules,
    override_message_type_for_app,
    register_message_types,
    register_messenger_objects,
)
from .scheduling import TypeMessages, can_bulk_schedule, schedule_in_bulk, schedule_messages  # noqa: F401
from .site import get_site_url
from .urls import get_sitemessage_inbox_urls, get_sitemessage_urls
from .views import mark_read, unsubscribe

__all__ = [
    'schedule_messages',
    'aschedule_messages',
    'send_scheduled_messages',
    'send_test_message',
    'asend_test_message',
    'check_undelivered',
    'cleanup_sent_messages',
    'prepare_dispatches',
    'get_user_preferences_for_ui',
    'set_user_preferences_from_request',
    'get_sitemessage_urls',
    'get_sitemessage_inbox_urls',
    'SendReport',
    'TypeMessages',
    '_ALIAS_SEP',
    '_PREF_POST_KEY',
    'register_builtin_message_types',
    'MessageBase',
    'PlainTextMessage',
    'Message',
    'Dispatch',
    'Subscription',
    'MessageTuple',
    'is_iterable',
    'import_project_sitemessage_modules',
    'get_site_url',
    'recipients',
    'register_messenger_objects',
    'get_registered_messenger_object',
    'get_registered_messenger_objects',
    'register_message_types',
    'get_registered_message_type',
    'get_registered_message_types',
    'get_message_type_for_app',
    'override_message_type_for_app',
    'Recipient',
    'TypeUser',
    'UnknownMessengerError',
    'UnknownMessageTypeError',
    'mark_read',
    'unsubscribe',
]


def send_test_message(messenger_id: str, to: Optional[str] = None) -> Any:
    """Send a test message through a registered messenger right away; errors reach the caller."""
    messenger = get_registered_messenger_object(messenger_id)
    return messenger.send_test_message(to=to, text='Test message from sitemessages.')


asend_test_message = async_twin(send_test_message)
