"""E-mail message types: plain text and HTML (``subject``, ``type`` and attachments are read by the SMTP messenger)."""

from __future__ import annotations

import base64
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from django.utils.translation import gettext_lazy as _

from ..headers import check_header_value
from ..languages import translations_of
from .attachments import CONTEXT_KEY, TypeAttachment, store_attachments
from .base import MessageBase


class _EmailMessageBase(MessageBase):
    supported_messengers = ['smtp']
    title = _('Email notification')

    def __init__(
        self,
        subject: str,
        text_or_dict: Union[str, dict],
        type_name: str,
        template_path: Optional[str] = None,
        *,
        attachments: Optional[Iterable[TypeAttachment]] = None,
    ):
        context: Dict[str, Any] = {'subject': subject, 'type': type_name}
        translations = translations_of(subject)  # a gettext_lazy() subject follows each recipient's language
        if translations is not None:
            context.update(subject=str(subject), subject_translations=translations)
        self.update_context(context, text_or_dict)
        super().__init__(context, template_path=template_path)
        if attachments:  # stored now (refused here if bad); the context keeps references only
            check_header_value('Subject', subject)  # refused before the files are stored
            self.context[CONTEXT_KEY] = store_attachments(attachments)

    @classmethod
    def merge_context(cls, context: dict, new_context: dict) -> dict:
        """Merge as the base does; a grouped e-mail keeps the attachments of every message merged into it."""
        merged = super().merge_context(context, new_context)
        if context.get(CONTEXT_KEY) or new_context.get(CONTEXT_KEY):
            merged[CONTEXT_KEY] = [*(context.get(CONTEXT_KEY) or ()), *(new_context.get(CONTEXT_KEY) or ())]
        return merged


class EmailTextMessage(_EmailMessageBase):
    """A plain text e-mail: a text, or a dict rendered by a ``.txt`` template."""

    alias = 'email_plain'
    template_ext = 'txt'

    def __init__(
        self,
        subject: str,
        text_or_dict: Union[str, dict],
        template_path: Optional[str] = None,
        *,
        attachments: Optional[Iterable[TypeAttachment]] = None,
    ):
        super().__init__(subject, text_or_dict, 'plain', template_path=template_path, attachments=attachments)


class EmailHtmlMessage(_EmailMessageBase):
    """An HTML e-mail (sent with a plain text alternative): HTML, or a dict rendered by a template."""

    alias = 'email_html'
    template_ext = 'html'

    def __init__(
        self,
        subject: str,
        html_or_dict: Union[str, dict],
        template_path: Optional[str] = None,
        *,
        attachments: Optional[Iterable[TypeAttachment]] = None,
    ):
        super().__init__(subject, html_or_dict, 'html', template_path=template_path, attachments=attachments)


class EmailMimeMessage(MessageBase):
    """An e-mail exactly as Django built it (``EmailMessage.message()``): sent byte for byte.

    Scheduled by :class:`sitemessage.backends.EmailBackend`. The MIME bytes are stored once, on the
    message (ASCII as it is, anything else base64), with the envelope sender and recipients; its
    single dispatch goes to all recipients in one SMTP transaction, as Django's SMTP backend does.
    Nothing is rendered: no template, no links added.
    """

    alias = 'email_django'
    supported_messengers = ['smtp']
    allow_user_subscription = False
    title = _('Email from Django')
    send_retry_limit = 10

    #: The SMTP messenger sends these bytes unchanged (see ``SMTPMessenger.send_mime``).
    prebuilt_mime = True

    def __init__(self, mime: bytes, envelope_from: str, envelope_to: List[str], subject: str = ''):
        super().__init__()
        encoding, text = encode_mime(mime)
        self.context.update(
            {
                'subject': subject,
                'type': 'mime',
                'mime': text,
                'mime_encoding': encoding,
                'envelope_from': envelope_from,
                'envelope_to': list(envelope_to),
                # What compile() gives: a dispatch's message_cache never holds a second copy of the MIME.
                self.SIMPLE_TEXT_ID: f'E-mail built by Django, {len(mime)} bytes (stored on the message).',
            }
        )

    @staticmethod
    def get_mime(context: dict) -> bytes:
        """The stored e-mail bytes."""
        return decode_mime(context.get('mime_encoding', 'ascii'), context['mime'])


def encode_mime(data: bytes) -> Tuple[str, str]:
    """Bytes as JSON-safe text that round-trips: ASCII as it is (readable in the admin), else base64."""
    if data.isascii():
        return 'ascii', data.decode('ascii')
    return 'base64', base64.b64encode(data).decode('ascii')


def decode_mime(encoding: str, text: str) -> bytes:
    if encoding == 'base64':
        return base64.b64decode(text)
    return text.encode('ascii')
