"""Discovered by sitemessage at start-up: the demo's messengers and its own message type."""

from datetime import date

from django.conf import settings

from sitemessage.messages.base import MessageBase
from sitemessage.messages.email import EmailTextMessage
from sitemessage.messengers.base import MessengerBase
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.toolbox import register_message_types, register_messenger_objects

from . import outbox


class ConsoleMessenger(MessengerBase):
    """A custom messenger: prints each message and keeps it in the demo outbox.

    Its addresses are usernames (``address_attr``), so it can be picked in the preferences table.
    """

    alias = 'console'
    title = 'Console'
    address_attr = 'username'

    def send(self, message_cls, message_model, dispatch_models):
        for dispatch in dispatch_models:
            if not dispatch.address:
                self.mark_failed(dispatch, 'No console address (username) for this recipient')
                continue
            self._print(dispatch.address, dispatch.message_cache, message_cls.get_alias())
            self.mark_sent(dispatch)

    def _test_message(self, to, text):
        self._print(to, text, 'test')
        return 'printed'

    @staticmethod
    def _print(to, text, message_type):
        print(f'[console] to {to} ({message_type}):\n{text}\n', flush=True)
        outbox.append(settings.DEMO_OUTBOX, {'transport': 'console', 'to': to, 'type': message_type, 'text': text})


class WeeklyDigest(MessageBase):
    """A custom, templated message type: a list of news items.

    Templates: ``templates/sitemessage/messages/weekly_digest__smtp.tpl`` (HTML e-mail) and
    ``weekly_digest__console.tpl`` (text), derived from the alias and the messenger alias.
    """

    alias = 'weekly_digest'
    title = 'Weekly digest'
    supported_messengers = ['smtp', 'console']

    def __init__(self, items, week=None):
        week = week or date.today().isocalendar()[1]
        # 'subject' and 'type' are read by SMTPMessenger (type 'html': sent with a text alternative).
        super().__init__({'subject': f'Weekly digest, week {week}', 'type': 'html', 'items': list(items), 'week': week})

    @classmethod
    def get_template_context(cls, context):
        context['greeting'] = 'Hello!'
        return context

    @classmethod
    def create(cls, items):
        """Schedule a digest for everybody subscribed (the sender, run with --prepare, makes the dispatches)."""
        return cls(items).schedule()


class ActivityDigest(EmailTextMessage):
    """Activity e-mails collected for 15 seconds per recipient, then sent as one (a digest window).

    Template: ``templates/demo/activity_digest.txt``, which lists ``digest`` (every joined context).
    """

    alias = 'activity_digest'
    title = 'Activity digest'
    digest_window = 15  # seconds: short, for the demo (e.g. timedelta(minutes=10) on a real site)
    template = 'demo/activity_digest.txt'

    def __init__(self, event: str):
        super().__init__('Your activity digest', {'event': event})


class SecurityAlert(EmailTextMessage):
    """At most two per recipient per minute (a throttle): the rest are recorded as throttled, not sent."""

    alias = 'security_alert'
    title = 'Security alert'
    throttle = (2, 60)

    def __init__(self, text: str):
        super().__init__('Security alert', text)


register_messenger_objects(
    SMTPMessenger(),  # everything from settings: EMAIL_HOST/EMAIL_PORT point at mail_sink.py
    ConsoleMessenger(),
)
register_message_types(WeeklyDigest, ActivityDigest, SecurityAlert)
