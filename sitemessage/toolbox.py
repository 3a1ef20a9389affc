"""The public facade of sitemessage: scheduling, sending, preferences, maintenance, registries."""
from __future__ import annotations

from typing import Any, List, Optional, Union

from .exceptions import UnknownMessageTypeError, UnknownMessengerError
from .headers import check_message_type_context
from .maintenance import check_undelivered, cleanup_sent_messages
from .messages import register_builtin_message_types
from .messages.base import MessageBase
from .messages.plain import PlainTextMessage
from .models import Dispatch, Message, MessageTuple, Subscription
from .preferences import (
    _ALIAS_SEP, _PREF_POST_KEY, get_user_preferences_for_ui, set_user_preferences_from_request,
)
from .scheduling import can_bulk_schedule, schedule_in_bulk
from .sending import SendReport, prepare_dispatches, send_scheduled_messages
from .urls import get_sitemessage_urls
from .utils import (
    Recipient, TypeUser, get_message_type_for_app, get_registered_message_type, get_registered_message_types,
    get_registered_messenger_object, get_registered_messenger_objects, get_site_url,
    import_project_sitemessage_modules, is_iterable, override_message_type_for_app, recipients,
    register_message_types, register_messenger_objects,
)
from .views import mark_read, unsubscribe

TypeMessages = Union[str, MessageBase, List[Union[str, MessageBase]]]

__all__ = [
    'schedule_messages', 'send_scheduled_messages', 'send_test_message', 'check_undelivered',
    'cleanup_sent_messages', 'prepare_dispatches', 'get_user_preferences_for_ui',
    'set_user_preferences_from_request', 'get_sitemessage_urls', 'SendReport', 'TypeMessages',
    '_ALIAS_SEP', '_PREF_POST_KEY',
    'register_builtin_message_types', 'MessageBase', 'PlainTextMessage', 'Message', 'Dispatch', 'Subscription',
    'MessageTuple', 'is_iterable', 'import_project_sitemessage_modules', 'get_site_url', 'recipients',
    'register_messenger_objects', 'get_registered_messenger_object', 'get_registered_messenger_objects',
    'register_message_types', 'get_registered_message_type', 'get_registered_message_types',
    'get_message_type_for_app', 'override_message_type_for_app', 'Recipient', 'TypeUser',
    'UnknownMessengerError', 'UnknownMessageTypeError', 'mark_read', 'unsubscribe',
]


def schedule_messages(messages: TypeMessages, recipients=None, sender=None,
                      priority: Optional[int] = None) -> List[MessageTuple]:
    """Schedule one or several messages (texts become :class:`PlainTextMessage`) to recipients.

    Without ``recipients`` the dispatches are created later by :func:`prepare_dispatches`.
    Recipients are checked and de-duplicated (see :mod:`sitemessage.headers`): an unsafe address or
    e-mail subject raises :class:`~sitemessage.headers.UnsafeHeaderValueError` before anything is stored.
    """
    if not is_iterable(messages) or isinstance(messages, MessageBase):
        messages = (messages,)
    if recipients is not None:
        recipients = Dispatch.normalize_recipients(recipients)  # a generator must serve every message
    prepared = []
    for message in messages:
        if isinstance(message, str):
            message = PlainTextMessage(message)
        elif not isinstance(message, MessageBase):
            raise TypeError(f'Expected a message text or a MessageBase instance, got {message!r}.')
        check_message_type_context(type(message), message.get_context(), recipients)  # all before any is stored
        prepared.append(message)

    bulk = [message for message in prepared if can_bulk_schedule(message)]
    scheduled = {}
    if len(bulk) > 1:
        for message, result in zip(bulk, schedule_in_bulk(bulk, recipients, sender=sender, priority=priority)):
            scheduled[id(message)] = result
    for message in prepared:
        if id(message) not in scheduled:
            scheduled[id(message)] = message.schedule(
                recipients=recipients, sender=sender,
                priority=priority if priority is not None else message.priority)
    return [scheduled[id(message)] for message in prepared]


def send_test_message(messenger_id: str, to: Optional[str] = None) -> Any:
    """Send a test message through a registered messenger right away; errors reach the caller."""
    messenger = get_registered_messenger_object(messenger_id)
    return messenger.send_test_message(to=to, text='Test message from sitemessages.')
