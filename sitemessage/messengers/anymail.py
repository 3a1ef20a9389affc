"""E-mail through any ESP that django-anymail supports (Mailgun, Postmark, SendGrid, Amazon SES...).

Each dispatch is one e-mail sent by an anymail ``EmailBackend``; the id the ESP gives it
(``message.anymail_status.message_id``) is stored as the dispatch's ``provider_message_id``, so
the ESP's delivery webhooks update the dispatch (:mod:`sitemessage.tracking`). Anymail's docs:
https://anymail.dev/en/stable/sending/anymail_additions/#anymail-status
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from django.conf import settings
from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy as _

from ..exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    RecipientRefusedError,
    SiteMessageConfigurationError,
)
from ..optional import import_optional
from ..plaintext import html_to_text
from ..settings import get_setting
from .base import MessengerBase, PerThread
from .list_headers import list_headers_for

if TYPE_CHECKING:  # pragma: nocover
    from django.core.mail import EmailMultiAlternatives

    from ..models import Dispatch, Message

# Anymail recipient statuses that refuse the address itself (anymail raises AnymailRecipientsRefused
# for them unless ANYMAIL_IGNORE_RECIPIENT_STATUS is set).
_REFUSED = {'rejected', 'invalid'}


class _Connection:
    backend: Any = None  # this thread's open anymail EmailBackend


class AnymailMessenger(MessengerBase):
    """Send e-mails through an anymail ESP backend, keeping the ESP's message id on each dispatch.

    :param from_email: the sender (default: ``DEFAULT_FROM_EMAIL``).
    :param backend: dotted path of the anymail backend, e.g. ``'anymail.backends.mailgun.EmailBackend'``
        (default: ``SITEMESSAGE_ANYMAIL_BACKEND``).
    :param backend_options: passed to the backend (``api_key=...``; otherwise anymail reads ``ANYMAIL``).
    """

    alias = 'anymail'
    title = _('E-mail (anymail)')
    address_attr = 'email'

    _connection = PerThread(_Connection)

    def __init__(self, from_email: Optional[str] = None, backend: Optional[str] = None, **backend_options: Any):
        self.from_email = from_email
        self.backend = backend
        self.backend_options = backend_options

    def backend_path(self) -> str:
        """The anymail backend to send through: the constructor's, else ``SITEMESSAGE_ANYMAIL_BACKEND``."""
        path = self.backend or get_setting('ANYMAIL_BACKEND')
        if not path:
            raise SiteMessageConfigurationError(
                'AnymailMessenger needs an anymail backend: pass backend="anymail.backends.<esp>.EmailBackend" '
                'or set SITEMESSAGE_ANYMAIL_BACKEND.'
            )
        if str(path).startswith('sitemessage.'):
            raise SiteMessageConfigurationError(
                f'AnymailMessenger cannot send through {path!r}: that queues the e-mail again; name an anymail backend.'
            )
        return str(path)

    # Connection ---------------------------------------------------------------------------------

    def before_send(self) -> None:
        import_optional('anymail', extra='anymail')
        # Instantiated as get_connection() would, which Django 6.1 deprecates (it serves MAILERS now).
        backend = import_string(self.backend_path())(fail_silently=False, **self.backend_options)
        try:
            backend.open()
        except Exception as error:
            raise MessengerWarmupException(f'{self.title}: {type(error).__name__}: {error}') from error
        self._connection.backend = backend

    def after_send(self) -> None:
        backend, self._connection.backend = self._connection.backend, None
        if backend is not None:
            backend.close()

    # Delivery -----------------------------------------------------------------------------------

    def send(self, message_cls, message_model: 'Message', dispatch_models: List['Dispatch']) -> None:
        """Send one e-mail per dispatch and keep the ESP's message id of each."""
        list_headers = list_headers_for([(message_cls, message_model, dispatch_models)])
        for dispatch in dispatch_models:
            if not dispatch.address:
                self.mark_failed(dispatch, PermanentDeliveryError('The recipient has no e-mail address'))
                continue
            try:
                unsubscribe_url = message_cls.get_unsubscribe_directive(message_model, dispatch)
                headers = dict(list_headers(message_cls, message_model, dispatch, unsubscribe_url))
                email = self.build_email(dispatch.address, dispatch.message_cache, message_model.context, headers)
                message_id = self._send_email(email)
            except PermanentDeliveryError as error:
                self.mark_failed(dispatch, error)
            except MessengerException as error:
                self.mark_error(dispatch, error, message_cls)
            else:
                self.mark_sent(dispatch, provider_id=message_id)

    def build_email(
        self, to: str, text: str, context: dict, headers: Optional[dict] = None
    ) -> 'EmailMultiAlternatives':
        """Return the e-mail for one recipient: the HTML of ``type='html'`` messages goes with a text part."""
        from django.core.mail import EmailMultiAlternatives

        subject = str(context.get('subject') or _('No Subject'))
        html = context.get('type') == 'html'
        email = EmailMultiAlternatives(
            subject=subject,
            body=html_to_text(text) if html else text,
            from_email=self.from_email or settings.DEFAULT_FROM_EMAIL,
            to=[to],
            headers=headers or {},
        )
        if html:
            email.attach_alternative(text, 'text/html')
        return email

    def _send_email(self, email: 'EmailMultiAlternatives') -> Any:
        """Send through this thread's backend; return the ESP's message id. Anymail's errors are mapped."""
        errors = import_optional('anymail.exceptions', extra='anymail')
        backend = self._connection.backend
        if backend is None:
            self.before_send()
            backend = self._connection.backend
        try:
            backend.send_messages([email])
        except errors.AnymailRecipientsRefused as error:
            raise RecipientRefusedError(f'{self.title}: {error}') from error
        except (
            errors.AnymailInvalidAddress,
            errors.AnymailUnsupportedFeature,
            errors.AnymailSerializationError,
        ) as error:
            raise PermanentDeliveryError(f'{self.title}: {error}') from error
        except errors.AnymailError as error:
            raise MessengerException(f'{self.title}: {error}') from error
        status = getattr(email, 'anymail_status', None)
        statuses = set(getattr(status, 'status', None) or ())
        if statuses and statuses <= _REFUSED:  # ANYMAIL_IGNORE_RECIPIENT_STATUS: anymail did not raise
            raise RecipientRefusedError(f'{self.title}: the ESP refused the recipient ({", ".join(sorted(statuses))})')
        if 'failed' in statuses:
            raise MessengerException(f'{self.title}: the ESP could not send it (status: failed)')
        message_id = getattr(status, 'message_id', None)
        return message_id if isinstance(message_id, (str, int)) else None

    def _test_message(self, to: Optional[str], text: str) -> Any:
        if not to:
            raise PermanentDeliveryError('No recipient')
        return self._send_email(self.build_email(to, text, {'type': 'html'}))
