"""Any service Apprise speaks (Slack, Discord, Matrix, ntfy, Teams, SMS gateways, ...): https://appriseit.com/

A dispatch's address is an Apprise URL (``ntfy://ntfy.example.com/alerts``, ``slack://T/B/C``,
``json://host/path``; see Apprise's list of services), or a name the messenger was given a URL
for: ``AppriseMessenger(urls={'ops': 'slack://...'})``. Apprise sends one notification at a time
here (its own retries off by default) and answers only True/False, so the reason of a failure is
what Apprise logged while sending (captured per thread). Error mapping: an address that is not a
URL Apprise knows fails at once, as does an HTTP 4xx refusal (bad token, unknown channel) except
408 and 429; a 5xx answer, a timeout or an unreachable host are retried. URLs carry tokens and
passwords: they are never written into an error text (Apprise's privacy form is).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Type
from urllib.parse import urlsplit

from django.utils.translation import gettext_lazy as _

from ..exceptions import (
    MessengerException,
    PermanentDeliveryError,
    SiteMessageConfigurationError,
    TemporaryDeliveryError,
)
from ..optional import import_optional
from .base import MessengerBase

if TYPE_CHECKING:  # pragma: nocover
    from ..messages.base import MessageBase
    from ..models import Dispatch, Message

# Apprise's plugins end their failure warnings with "error=<HTTP status>."
_HTTP_STATUS = re.compile(r'error=(\d{3})\b')
_TEMPORARY_CLIENT_ERRORS = {408, 425, 429}


def load_apprise() -> Any:
    """Import Apprise with its plugins, undoing what they do to the whole process's e-mail.

    Apprise's e-mail plugin, loaded with the others on first use, calls
    ``email.charset.add_charset('utf-8', QP, QP)``: every UTF-8 header and body the process
    writes afterwards (Django's ``send_mail()``, ``SMTPMessenger``) would switch from base64 to
    quoted-printable. The plugins are loaded here, once, and the charset tables restored.
    """
    from email import charset

    tables: Tuple[Dict[Any, Any], ...] = (charset.CHARSETS, charset.ALIASES, charset.CODEC_MAP)
    saved = [dict(table) for table in tables]
    try:
        apprise = import_optional('apprise', extra='apprise')
        apprise.Apprise().add('json://localhost/')  # loads every plugin module (nothing is sent)
    finally:
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)
    return apprise


class _ThreadLog(logging.Handler):
    """Collects what the ``apprise`` logger says on the current thread (connections may run in parallel)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


class AppriseMessenger(MessengerBase):
    """Delivers to Apprise URLs: ``AppriseMessenger()`` or ``AppriseMessenger(urls={'name': 'url', ...})``."""

    alias = 'apprise'
    title = _('Apprise')

    def __init__(self, urls: Optional[Dict[str, str]] = None, *, body_format: str = 'text'):
        """``urls``: names of Apprise URLs, usable as addresses; ``body_format``: text, markdown or html."""
        if urls is not None and not (isinstance(urls, dict) and all(isinstance(u, str) for u in urls.values())):
            raise SiteMessageConfigurationError(
                f'AppriseMessenger(urls=...) must be a dict of name -> URL, got {urls!r}.'
            )
        if body_format not in ('text', 'markdown', 'html'):
            raise SiteMessageConfigurationError(
                f"AppriseMessenger(body_format=...) must be 'text', 'markdown' or 'html', got {body_format!r}."
            )
        self.urls = dict(urls or {})
        self.body_format = body_format
        # Imported now: a project without the extra learns it when registering the messenger.
        self.apprise: Any = load_apprise()

    def send(
        self, message_cls: Type['MessageBase'], message_model: 'Message', dispatch_models: List['Dispatch']
    ) -> None:
        """Notify each dispatch's URL with its text (the message's ``subject``, if any, as the title)."""
        context: dict = message_model.context if isinstance(message_model.context, dict) else {}
        title = str(context.get('subject') or '')
        for dispatch in dispatch_models:
            try:
                self._notify(dispatch.address, str(dispatch.message_cache or ''), title)
            except PermanentDeliveryError as error:
                self.mark_failed(dispatch, error)
            except MessengerException as error:
                self.mark_error(dispatch, error, message_cls)
            else:
                self.mark_sent(dispatch)

    def _test_message(self, to: Optional[str], text: str) -> Any:
        return self._notify(to or '', text, '')

    # Internals ----------------------------------------------------------------------------------

    def _notify(self, address: str, body: str, title: str) -> bool:
        """Send one notification; raise a delivery error saying why it was not sent."""
        plugin, shown, secrets = self._plugin_for(address)
        handler = _ThreadLog()
        logger = logging.getLogger('apprise')
        logger.addHandler(handler)
        try:
            sent = plugin.notify(body=body, title=title, body_format=self.body_format)
        except Exception as error:  # a plugin's bug must not take the batch down
            raise MessengerException(f'Apprise failed on {shown}: {type(error).__name__}') from None
        finally:
            logger.removeHandler(handler)
        if sent:
            return True
        reason = ' '.join(handler.lines) or 'Apprise logged no reason'
        for secret in secrets:
            reason = reason.replace(secret, '****')
        raise self._failure(f'Apprise could not notify {shown}: {reason}', reason)

    def _plugin_for(self, address: str) -> Tuple[Any, str, List[str]]:
        """The Apprise plugin for an address (a URL or a configured name), how to name it in errors, its secrets."""
        url = self.urls.get(address, address)
        scheme = urlsplit(url).scheme if '://' in url else ''
        if not scheme:
            # An address may hold a secret too: name only its length.
            raise PermanentDeliveryError(
                'Not an Apprise URL nor a name given in AppriseMessenger(urls=...): '
                f'an address of {len(url)} characters.'
            )
        plugin = self.apprise.Apprise.instantiate(url)
        if plugin is None:
            raise PermanentDeliveryError(f'Apprise does not support this URL (scheme {scheme!r}).')
        password = urlsplit(url).password
        return plugin, plugin.url(privacy=True), [url, password] if password else [url]

    @staticmethod
    def _failure(text: str, reason: str) -> MessengerException:
        """A 4xx answer (but 408/425/429) fails the dispatch; anything else is worth a retry."""
        match = _HTTP_STATUS.search(reason)
        status = int(match.group(1)) if match else None
        if status is not None and 400 <= status < 500 and status not in _TEMPORARY_CLIENT_ERRORS:
            return PermanentDeliveryError(text)
        return TemporaryDeliveryError(text)
