"""Discovered at start-up like a project's module: registers the test messengers and types."""

from sitemessage.messages.base import MessageBase
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.toolbox import register_message_types, register_messenger_objects
from tests.fakes import FakeMessenger


class GreetingMessage(MessageBase):
    """A templated type (tests/testapp/templates/sitemessage/messages/greeting__*.tpl)."""

    alias = 'greeting'
    title = 'Greetings'


class OverriddenPlain(PlainTextMessage):
    """Registered under a built-in alias: the project's type must win over the built-in one."""

    alias = 'plain'


register_messenger_objects(FakeMessenger())
register_message_types(GreetingMessage, OverriddenPlain)
