"""E-mail message types: plain text and HTML (``subject`` and ``type`` are read by the SMTP messenger)."""
from __future__ import annotations

from typing import Optional, Union

from django.utils.translation import gettext_lazy as _

from .base import MessageBase


class _EmailMessageBase(MessageBase):

    supported_messengers = ['smtp']
    title = _('Email notification')

    def __init__(self, subject: str, text_or_dict: Union[str, dict], type_name: str,
                 template_path: Optional[str] = None):
        context = {'subject': subject, 'type': type_name}
        self.update_context(context, text_or_dict)
        super().__init__(context, template_path=template_path)


class EmailTextMessage(_EmailMessageBase):
    """A plain text e-mail: a text, or a dict rendered by a ``.txt`` template."""

    alias = 'email_plain'
    template_ext = 'txt'

    def __init__(self, subject: str, text_or_dict: Union[str, dict], template_path: Optional[str] = None):
        super().__init__(subject, text_or_dict, 'plain', template_path=template_path)


class EmailHtmlMessage(_EmailMessageBase):
    """An HTML e-mail (sent with a plain text alternative): HTML, or a dict rendered by a template."""

    alias = 'email_html'
    template_ext = 'html'

    def __init__(self, subject: str, html_or_dict: Union[str, dict], template_path: Optional[str] = None):
        super().__init__(subject, html_or_dict, 'html', template_path=template_path)
