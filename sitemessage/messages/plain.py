from django.utils.translation import gettext_lazy as _

from .base import MessageBase


class PlainTextMessage(MessageBase):
    """A plain text message for any messenger."""

    alias = 'plain'
    title = _('Text notification')

    def __init__(self, text: str):
        super().__init__({self.SIMPLE_TEXT_ID: text})
