"""E-mail over SMTP (stdlib ``smtplib``), writing standards-correct messages.

Each message carries ``Date``, ``Message-ID``, ``From``, ``To`` and ``Subject``; HTML goes as
``multipart/alternative`` with a readable text part; ``List-Id`` (RFC 2919), ``List-Unsubscribe``
(RFC 2369) and, where one click really unsubscribes, ``List-Unsubscribe-Post`` (RFC 8058) come
from :mod:`sitemessage.messengers.list_headers`.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass
from email import policy
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesHeaderParser
from email.utils import formatdate, make_msgid, parseaddr
from functools import lru_cache
from importlib import import_module
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..exceptions import MessengerException, MessengerWarmupException, PermanentDeliveryError, RecipientRefusedError
from ..headers import UnsafeHeaderValueError, check_context
from ..languages import rendering_language, translated
from ..mail_settings import email_setting
from ..messages.attachments import attachments_of
from ..plaintext import html_to_text
from ..settings import get_timeout_setting
from . import smtp_wire
from .base import Dispatch, MessengerBase
from .list_headers import list_headers_for
from .smtp_attachments import attachment_parts
from .smtp_pipelining import (
    PLAIN_ADDRESS,
    can_pipeline,
    content_refusal,
    is_sequencing_refusal,
    read_envelope_replies,
    send_pipelined,
    write_content,
    write_envelope,
)
from .smtp_tls import tls_context

LOGGER = logging.getLogger(__name__)


class _Policy(policy.Compat32):
    """compat32 that writes short ASCII headers as they are, without the costly folding machinery.

    RFC 5322 allows 998 characters a line, so long List-Unsubscribe URLs stay unfolded. Encoded
    (``Header``) values and anything unusual go through compat32's own folding.
    """

    def _fold(self, name, value, sanitize):
        if (
            isinstance(value, str)
            and value.isascii()
            and '\n' not in value
            and '\r' not in value
            and len(name) + len(value) + 2 <= self.max_line_length
        ):
            return f'{name}: {value}{self.linesep}'
        return super()._fold(name, value, sanitize)


_POLICY = _Policy(max_line_length=998, linesep='\r\n')


class _UTF8Policy(_Policy):
    """Writes a header holding a UTF-8 address as UTF-8 (RFC 6532): only for SMTPUTF8 transactions."""

    def _fold(self, name, value, sanitize):
        if isinstance(value, str) and not value.isascii() and '\n' not in value and '\r' not in value:
            return f'{name}: {value}{self.linesep}'
        return super()._fold(name, value, sanitize)

    def fold_binary(self, name, value):
        return self._fold(name, value, sanitize=False).encode('utf-8', 'surrogateescape')


_UTF8_POLICY = _UTF8Policy(max_line_length=998, linesep='\r\n')


@dataclass(frozen=True)
class SMTPSettings:
    """The SMTP messenger's configuration, read at once when a connection opens (:meth:`SMTPMessenger.settings`).

    Each value is the constructor's argument (or a value assigned since, as 1.4.0 allowed), else
    the project's setting (``EMAIL_*``, or the OPTIONS of Django 6.1's SMTP mailer), else the default.
    """

    from_email: str
    login: str
    password: str
    host: str
    port: int
    use_tls: bool
    use_ssl: bool
    timeout: Optional[float]
    ssl_certfile: Optional[str]
    ssl_keyfile: Optional[str]

    def describe(self) -> str:
        """``host:port``, for errors (never the login or the password)."""
        return f'{self.host}:{self.port}'


# option -> (the Django setting it falls back to, the default without either)
_OPTIONS: Dict[str, Tuple[str, Any]] = {
    'from_email': ('DEFAULT_FROM_EMAIL', 'webmaster@localhost'),
    'login': ('EMAIL_HOST_USER', ''),
    'password': ('EMAIL_HOST_PASSWORD', ''),
    'host': ('EMAIL_HOST', 'localhost'),
    'port': ('EMAIL_PORT', 25),
    'use_tls': ('EMAIL_USE_TLS', False),
    'use_ssl': ('EMAIL_USE_SSL', False),
    'timeout': ('EMAIL_TIMEOUT', None),
    'ssl_certfile': ('EMAIL_SSL_CERTFILE', None),
    'ssl_keyfile': ('EMAIL_SSL_KEYFILE', None),
}


class _ConnectionState(threading.local):
    smtp: Optional[smtplib.SMTP] = None
    settings: Optional[SMTPSettings] = None  # what this thread's connection was opened with
    session_started: bool = False
    pipelining: bool = False  # the server said PIPELINING (RFC 2920) in its EHLO reply
    reset_pending: bool = False  # content refused while the next envelope was already on its way: RSET due


def _smtp_code(error: BaseException) -> Optional[int]:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in error.recipients.values()]
        return max(codes) if codes else None
    return getattr(error, 'smtp_code', None)


def is_connection_lost(error: BaseException) -> bool:
    """A broken connection (SMTPException is an OSError too, but a refusal leaves the session usable)."""
    return isinstance(error, smtplib.SMTPServerDisconnected) or (
        isinstance(error, OSError) and not isinstance(error, smtplib.SMTPException)
    )


def is_permanent(error: BaseException) -> bool:
    """A 5xx reply means the server will never accept this message: retrying cannot help.

    Except 503 (bad sequence of commands): it answers the session's state, not the e-mail. An
    e-mail that cannot be encoded (``UnicodeError``) will not encode on the next attempt either.
    """
    if isinstance(error, UnicodeError):
        return True
    code = _smtp_code(error)
    return code is not None and 500 <= code < 600 and code != 503


def _option_property(name: str) -> property:
    """An option: the constructor's argument (or an assigned value), else the setting when None."""
    return property(lambda self: self._option(name), lambda self, value: self._options.__setitem__(name, value))


class SMTPMessenger(MessengerBase):
    """Send e-mails through an SMTP server; options default to Django's SMTP settings.

    Those are the OPTIONS of the SMTP mailer in ``MAILERS`` where the project defines it (Django
    6.1+; see :mod:`sitemessage.mail_settings`), else the ``EMAIL_*`` settings.

    ``from_email`` falls back to ``DEFAULT_FROM_EMAIL``. An argument given explicitly (even
    ``False`` or ``0``) wins over the setting. TLS (``use_tls`` or ``use_ssl``) verifies the server
    against ``ca_file`` (a PEM bundle; default: the system's CAs) and presents the client certificate
    ``ssl_certfile``/``ssl_keyfile`` (default: ``EMAIL_SSL_CERTFILE``/``EMAIL_SSL_KEYFILE``);
    ``ssl_context`` replaces all three.

    ``connection_class`` opens connections: ``connection_class(host, port, timeout=..., context=...)``
    (``context`` only with ``use_ssl``), returning an ``smtplib.SMTP``-like object. By default
    ``smtplib.SMTP`` or ``smtplib.SMTP_SSL``; a test can record or break connections there.
    """

    alias = 'smtp'
    title = gettext_lazy('E-mail')
    address_attr = 'email'
    deliver_on_own_thread = True  # connection state is per thread (see MessengerBase)
    connection_class: Optional[Callable[..., smtplib.SMTP]] = None

    def __init__(
        self,
        from_email: Optional[str] = None,
        login: Optional[str] = None,
        password: Optional[str] = None,
        host: Optional[str] = None,
        port: Optional[int] = None,
        use_tls: Optional[bool] = None,
        use_ssl: Optional[bool] = None,
        debug: bool = False,
        timeout: Optional[float] = None,
        *,
        connections: Optional[int] = None,
        pipelining: bool = True,
        ssl_context: Optional[ssl.SSLContext] = None,
        ca_file: Optional[str] = None,
        ssl_certfile: Optional[str] = None,
        ssl_keyfile: Optional[str] = None,
        connection_class: Optional[Callable[..., smtplib.SMTP]] = None,
    ):
        self.lib = import_module('smtplib')  # as 1.4.0 did: a test's stand-in in sys.modules is used
        self.debug = debug
        if not isinstance(pipelining, bool):
            raise TypeError(f'SMTPMessenger: pipelining must be True or False, got {pipelining!r}.')
        self.pipelining = pipelining
        if connections is not None:
            self.parallel_connections = connections
        self._options = {
            'from_email': from_email,
            'login': login,
            'password': password,
            'host': host,
            'port': port,
            'use_tls': use_tls,
            'use_ssl': use_ssl,
            'timeout': timeout,
            'ssl_certfile': ssl_certfile,
            'ssl_keyfile': ssl_keyfile,
        }
        self.ssl_context, self.ca_file = ssl_context, ca_file
        if connection_class is not None:
            self.connection_class = connection_class
        if self.use_tls and self.use_ssl:
            raise ValueError(
                'SMTPMessenger: use_tls and use_ssl (EMAIL_USE_TLS / EMAIL_USE_SSL) '
                'are mutually exclusive; set only one of them to True.'
            )

    def _option(self, name: str) -> Any:
        value = self._options[name]
        if value is not None:
            return value
        setting, default = _OPTIONS[name]
        return email_setting(setting, default)

    # Assignable, as in 1.4.0 (``messenger.port = 1``): the next connection uses the new value.
    from_email = _option_property('from_email')
    login = _option_property('login')
    password = _option_property('password')
    host = _option_property('host')
    port = _option_property('port')
    use_tls = _option_property('use_tls')
    use_ssl = _option_property('use_ssl')
    ssl_certfile = _option_property('ssl_certfile')
    ssl_keyfile = _option_property('ssl_keyfile')

    @property
    def timeout(self) -> Optional[float]:
        """Seconds to wait for the server: the argument, ``EMAIL_TIMEOUT``, else ``SITEMESSAGE_CONNECT_TIMEOUT``."""
        value = self._option('timeout')
        return get_timeout_setting('CONNECT_TIMEOUT') if value is None else value

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._options['timeout'] = value

    def settings(self) -> SMTPSettings:
        """Read the whole configuration now: each connection is opened with one consistent reading."""
        values = {name: self._option(name) for name in _OPTIONS}
        # A 1.4.0 suite's stand-in for smtplib sees the calls 1.4.0 made: no default timeout.
        if values['timeout'] is None and self.lib is smtplib:
            values['timeout'] = get_timeout_setting('CONNECT_TIMEOUT')
        return SMTPSettings(**values)

    def _tls_context(self, config: SMTPSettings) -> ssl.SSLContext:
        return tls_context(self.ssl_context, self.ca_file, config.ssl_certfile, config.ssl_keyfile)

    def _server(self) -> str:
        """``host:port`` of this thread's connection, for errors."""
        config = self._thread_state().settings
        return config.describe() if config is not None else f'{self.host}:{self.port}'

    def _sender(self) -> str:
        """``from_email`` as this thread's connection read it (the current value outside a connection)."""
        config = self._thread_state().settings
        return config.from_email if config is not None else self.from_email

    # Connection ---------------------------------------------------------------------------------
    # Each thread delivering a share of a batch holds its own connection.

    def _thread_state(self) -> '_ConnectionState':
        state = self.__dict__.get('_connection_state')
        if state is None:
            state = self.__dict__.setdefault('_connection_state', _ConnectionState())
        return state

    smtp = property(
        lambda self: self._thread_state().smtp, lambda self, value: setattr(self._thread_state(), 'smtp', value)
    )
    _session_started = property(
        lambda self: self._thread_state().session_started,
        lambda self, value: setattr(self._thread_state(), 'session_started', value),
    )

    def connection_state_snapshot(self) -> object:
        return dict(vars(self._thread_state()))  # ``smtp`` (closed after the run) and the rest

    def adopt_connection_state(self, snapshot: object) -> None:
        if isinstance(snapshot, dict):
            vars(self._thread_state()).update(snapshot)

    def _connect(self, config: SMTPSettings) -> smtplib.SMTP:
        """Open a connection with ``connection_class`` (by default ``smtplib.SMTP`` or ``SMTP_SSL``)."""
        kwargs: Dict[str, Any] = {'timeout': config.timeout} if config.timeout else {}
        if config.use_ssl:
            kwargs['context'] = self._tls_context(config)
        factory = self.connection_class or (self.lib.SMTP_SSL if config.use_ssl else self.lib.SMTP)
        return factory(config.host, config.port, **kwargs)

    def before_send(self) -> None:
        """Connect, secure (STARTTLS is required when ``use_tls``) and log in."""
        self._session_started = False
        state = self._thread_state()
        state.reset_pending = False
        state.settings = config = self.settings()
        try:
            self.smtp = self._connect(config)
            self.smtp.set_debuglevel(self.debug)
            if config.use_tls:
                self.smtp.ehlo()
                if not self.smtp.has_extn('STARTTLS'):
                    raise MessengerWarmupException(
                        f'SMTP Error: {config.describe()} does not offer STARTTLS, but use_tls is set; '
                        'refusing to continue in plain text'
                    )
                self.smtp.starttls(context=self._tls_context(config))
                self.smtp.ehlo()
            if config.login:
                self.smtp.login(config.login, config.password)
            self.smtp.ehlo_or_helo_if_needed()
            state.pipelining = self.pipelining and bool(self.smtp.has_extn('pipelining'))
        except (smtplib.SMTPException, OSError) as error:
            self._drop_connection()
            raise MessengerWarmupException(f'SMTP Error: {config.describe()}: {describe_smtp_error(error)}') from error
        except MessengerWarmupException:
            self._drop_connection()
            raise
        self._session_started = True

    def after_send(self) -> None:
        """Say QUIT; a server that already hung up is fine. ``smtp`` stays readable, as in 1.4.0."""
        smtp, self._session_started = self.smtp, False
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            smtp.close()

    def _drop_connection(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp, self._session_started = None, False

    # Messages ---------------------------------------------------------------------------------

    def _build_message(
        self,
        to: str,
        text: str,
        subject: Optional[str] = None,
        mtype: Optional[str] = None,
        unsubscribe_url: Optional[str] = None,
        *,
        date: Optional[str] = None,
        message_id: Optional[str] = None,
        headers: Sequence[Tuple[str, str]] = (),
        attachments: Sequence[Message] = (),
    ) -> Message:
        """Build the e-mail: headers, and a text part plus an HTML alternative for ``mtype='html'``.

        ``unsubscribe_url`` adds ``List-Unsubscribe`` alone (as 1.4.0); ``headers`` are further
        ``(name, value)`` pairs (see :mod:`sitemessage.messengers.list_headers`); ``attachments``
        are MIME parts added after the body (see :mod:`sitemessage.messengers.smtp_attachments`).
        Uses the stdlib's ``compat32`` MIME classes: about six times faster to build than
        ``EmailMessage``, which matters at thousands of messages a second.
        """
        msg: Any  # a MIME object, also carrying its envelope recipient
        if mtype == 'html':
            msg = MIMEMultipart('alternative')
            msg.attach(_text_part(html_to_text(text), 'plain'))
            msg.attach(_text_part(text, 'html'))
        else:
            msg = _text_part(text, 'plain')
        if attachments:  # the body first, then each attachment (see smtp_attachments)
            body, msg = msg, MIMEMultipart('mixed')
            msg.attach(body)
            for part in attachments:
                msg.attach(part)
        sender_header, _sender_address, sender_domain = _sender_parts(self._sender())
        msg.envelope_recipient = envelope_address(to)  # spares re-parsing To later
        msg['From'] = sender_header
        msg['To'] = smtp_wire.header_address(to)
        subject = str(subject or _('No Subject'))
        msg['Subject'] = subject if subject.isascii() else Header(subject, 'utf-8')
        msg['Date'] = date or date_header()
        msg['Message-ID'] = message_id or make_msgid(domain=sender_domain)
        for name, value in _extra_headers(unsubscribe_url, headers):
            msg[name] = value
        return msg

    def _message_bytes(
        self,
        to: str,
        text: str,
        subject: Optional[str] = None,
        mtype: Optional[str] = None,
        unsubscribe_url: Optional[str] = None,
        *,
        headers: Sequence[Tuple[str, str]] = (),
        message_id: Optional[str] = None,
        attachments: Sequence[Message] = (),
    ) -> bytes:
        """The e-mail as sent: what ``_build_message(...).as_bytes()`` gives, written directly when plain.

        A plain-text ASCII e-mail with short header values (most notifications) is formatted
        from a template, byte for byte what the MIME classes write (a test holds both to that),
        at a tenth of the cost; anything else goes through :meth:`_build_message`.
        """
        sender_header, _sender_address, sender_domain = _sender_parts(self._sender())
        subject = str(subject or _('No Subject'))
        date, message_id = date_header(), message_id or make_msgid(domain=sender_domain)
        if mtype != 'html' and not attachments:
            data = plain_message_bytes(
                sender_header,
                smtp_wire.header_address(to),
                subject,
                date,
                message_id,
                text,
                unsubscribe_url,
                headers=headers,
            )
            if data is not None:
                return data
        return self._build_message(
            to,
            text,
            subject,
            mtype,
            unsubscribe_url,
            date=date,
            message_id=message_id,
            headers=headers,
            attachments=attachments,
        ).as_bytes(policy=_policy_for(to))

    def _send_message(self, msg: Message, to: Optional[str] = None) -> dict:
        """Send a built e-mail to its envelope recipient (``to`` is the hook's; the e-mail knows its own)."""
        recipient = getattr(msg, 'envelope_recipient', None) or parseaddr(str(msg['To']))[1]
        return self._send_bytes(recipient, msg.as_bytes(policy=_policy_for(recipient)))

    def _send_bytes(self, recipient: str, data: bytes) -> dict:
        sender = _sender_parts(self._sender())[1]
        if self._thread_state().pipelining and can_pipeline(self.smtp, sender, recipient):
            return send_pipelined(self.smtp, sender, recipient, data)
        return self._sendmail(sender, recipient, data)

    def _sendmail(self, sender: str, recipient: str, data: bytes) -> dict:
        """``sendmail`` one command at a time; MAIL options only when needed (SMTPUTF8): otherwise 1.4.0's call."""
        options = self._mail_options(sender, recipient)
        if options:
            return self.smtp.sendmail(sender, [recipient], data, options)
        return self.smtp.sendmail(sender, [recipient], data)

    def _test_message(self, to: Optional[str], text: str) -> dict:
        # The wire guard holds for test messages too; a bare local name may be tried, as in 1.4.0.
        problem = smtp_wire.one_address_problem('recipient', to, require_domain=False) if to else 'No recipient'
        problem = problem or self._header_problem(None, None)
        if problem:
            raise PermanentDeliveryError(problem)
        return self._send_message(self._build_message(to or '', text, mtype='html'))

    def send(self, message_cls, message_model, dispatch_models) -> None:
        """Send one e-mail per dispatch; 5xx refusals fail the dispatch, anything else is retried."""
        self.send_many([(message_cls, message_model, dispatch_models)])

    def send_many(self, items) -> None:
        """Send the e-mails of several messages over this thread's connection.

        Where the server offers PIPELINING, an e-mail's content and the next one's envelope go
        out together, and the next e-mail is built while the server handles the previous one:
        about one round trip per e-mail instead of four.
        """
        items = self._send_prebuilt(self._refuse_unsafe(items))  # EmailBackend's e-mails, before pipelining
        in_flight = None  # (dispatch, message type): content sent, the server's verdict not read yet
        for dispatch, message_cls, recipient, data in self._outgoing(items):
            try:
                if self.smtp is None or not self._session_started:
                    try:
                        self.before_send()  # the server dropped us earlier in this run: reconnect
                    except MessengerWarmupException as error:
                        self.mark_error(dispatch, error, message_cls)
                        continue
                smtp, sender = self.smtp, _sender_parts(self._sender())[1]
                if not (self._thread_state().pipelining and can_pipeline(smtp, sender, recipient)):
                    previous, in_flight = in_flight, None
                    self._settle(previous)
                    self._send_one(dispatch, message_cls, recipient, data)
                    continue
                try:
                    write_envelope(smtp, sender, recipient, len(data))
                except (smtplib.SMTPException, OSError) as error:
                    previous, in_flight = in_flight, None
                    self._settle(previous, error)
                    self._record_failure(dispatch, error, message_cls)
                    continue
                previous, in_flight = in_flight, None
                self._settle(previous, next_envelope_sent=True)
                if self.smtp is not smtp:  # the connection broke while reading the previous verdict
                    self._record_failure(dispatch, smtplib.SMTPServerDisconnected('Connection lost'), message_cls)
                    continue
                state = self._thread_state()
                after_refusal, state.reset_pending = state.reset_pending, False
                try:
                    refusal = read_envelope_replies(smtp, sender, recipient)
                    if refusal is None:
                        write_content(smtp, data)
                except (smtplib.SMTPException, OSError) as error:
                    self._record_failure(dispatch, error, message_cls)
                    continue
                if refusal is not None:
                    if after_refusal or is_sequencing_refusal(refusal):
                        self._send_again(dispatch, message_cls, recipient, data)  # our sequencing, not this e-mail
                    else:
                        self._record_failure(dispatch, refusal, message_cls)
                    continue
                in_flight = (dispatch, message_cls)
            except Exception as error:  # a bug or an encoding problem: this dispatch's outcome, not the batch's
                LOGGER.exception('SMTP: unexpected error sending to %r', dispatch.address)
                previous, in_flight = in_flight, None
                self._settle(
                    previous,
                    smtplib.SMTPServerDisconnected(  # its verdict is unknown: retried
                        f'verdict not read: the connection was dropped after {type(error).__name__}'
                    ),
                )
                self._record_failure(dispatch, error, message_cls)
                self._drop_connection()  # the session's state is unknown: the next e-mail reconnects
        self._settle(in_flight)

    def _send_again(self, dispatch, message_cls, recipient: str, data: bytes) -> None:
        """Send an e-mail whose envelope was refused for the session's state, once, on a clean transaction.

        The refusal (``503`` bad sequence, or any refusal right after an unreset end-of-data
        refusal) answered the previous transaction, not this e-mail: its transaction has been reset
        (RSET) or its connection closed, and the e-mail goes again, one command at a time.
        """
        if self.smtp is None or self.smtp.sock is None:
            self._drop_connection()
            try:
                self.before_send()
            except MessengerWarmupException as error:
                self.mark_error(dispatch, error, message_cls)
                return
        self._send_one(dispatch, message_cls, recipient, data)

    # E-mails built elsewhere (Django's EmailMessage, queued by sitemessage.backends.EmailBackend) ---

    def send_mime(self, sender: str, recipients: List[str], data: bytes) -> dict:
        """Send prebuilt e-mail bytes unchanged to several envelope recipients in one transaction.

        As Django's SMTP backend: ``sendmail`` raises only when every recipient is refused and
        returns the refused ones otherwise.
        """
        return self.smtp.sendmail(sender or _sender_parts(self._sender())[1], recipients, data)

    def _refuse_unsafe(self, items):
        """Fail the dispatches of messages stored with a line break or NUL in a header value (a row
        written by an older version or by hand: scheduling refuses them); return the other items."""
        safe = []
        for item in items:
            message_cls, message_model, dispatches = item
            try:
                check_context(message_model.context, email=True)
            except UnsafeHeaderValueError as error:
                for dispatch in dispatches:
                    self.mark_failed(dispatch, PermanentDeliveryError(f'Not sent: {error}'))
                continue
            safe.append(item)
        return safe

    def _send_prebuilt(self, items):
        """Send the e-mails of message types with ``prebuilt_mime``; return the other items."""
        rest = []
        for item in items:
            message_cls, message_model, dispatches = item
            if not getattr(message_cls, 'prebuilt_mime', False):
                rest.append(item)
                continue
            for dispatch in dispatches:
                self._send_prebuilt_one(message_cls, message_model, dispatch)
        return rest

    def _send_prebuilt_one(self, message_cls, message_model, dispatch) -> None:
        if self.smtp is None:
            try:
                self.before_send()
            except MessengerWarmupException as error:
                self.mark_error(dispatch, error, message_cls)
                return
        context = message_model.context
        try:
            data = message_cls.get_mime(context)
            dispatch.provider_message_id = mime_message_id(data)  # Django's EmailMessage wrote one
            refused = self.send_mime(context.get('envelope_from') or '', list(context['envelope_to']), data)
        except (smtplib.SMTPException, OSError) as error:
            self._record_failure(dispatch, error, message_cls)
            return
        except (UnicodeError, KeyError, ValueError) as error:  # cannot get better by retrying
            self.mark_failed(dispatch, f'Cannot send the stored e-mail: {type(error).__name__}: {error}')
            return
        if refused:
            details = '; '.join(
                f'{rcpt}: {code} {msg.decode(errors="replace") if isinstance(msg, bytes) else msg}'
                for rcpt, (code, msg) in refused.items()
            )
            dispatch.set_outcome(Dispatch.DISPATCH_STATUS_SENT, f'Sent; recipients refused by the server: {details}')
        else:
            self.mark_sent(dispatch)

    def _outgoing(self, items):
        """Yield ``(dispatch, message type, envelope recipient, e-mail bytes)``; bad addresses fail here."""
        list_headers = list_headers_for(items)
        for message_cls, message_model, dispatches in items:
            mtype = message_model.context.get('type')
            attachments = self._attachments(message_cls, message_model, dispatches)
            if attachments is None:
                continue
            for dispatch in dispatches:
                subject = translated(message_model.context, 'subject', dispatch.language)
                try:
                    problem = address_problem(dispatch.address)
                    if not problem:
                        unsubscribe_url = message_cls.get_unsubscribe_directive(message_model, dispatch)
                        problem = self._header_problem(subject, unsubscribe_url)
                    if problem:
                        self.mark_failed(dispatch, PermanentDeliveryError(problem))
                        continue
                    with rendering_language(dispatch.language):  # "No Subject" and the List-Id title follow it
                        headers = list_headers(message_cls, message_model, dispatch, unsubscribe_url)
                        # The Message-ID is the provider id: kept on the dispatch once the server accepts the e-mail.
                        dispatch.provider_message_id = make_msgid(domain=_sender_parts(self._sender())[2])
                        data = self._message_bytes(
                            dispatch.address,
                            dispatch.message_cache,
                            subject=subject,
                            mtype=mtype,
                            headers=headers,
                            message_id=dispatch.provider_message_id,
                            attachments=attachments,
                        )
                    recipient = envelope_address(dispatch.address)
                except UnicodeError as error:  # an address IDNA refuses, a text that cannot be encoded
                    self.mark_failed(
                        dispatch,
                        PermanentDeliveryError(
                            f'`{dispatch.address}` cannot be encoded for SMTP: {type(error).__name__}: {error}'
                        ),
                    )
                    continue
                except Exception as error:
                    self.mark_error(dispatch, error, message_cls)
                    continue
                yield dispatch, message_cls, recipient, data

    def _attachments(self, message_cls, message_model, dispatches) -> Optional[Sequence[Message]]:
        """The message's attachment parts, read once for all its e-mails; None (all marked) when unreadable."""
        if not attachments_of(message_model.context):
            return []
        try:
            return attachment_parts(message_model.context)
        except PermanentDeliveryError as error:
            for dispatch in dispatches:
                self.mark_failed(dispatch, error)
        except Exception as error:  # a storage that is away for now: retried
            for dispatch in dispatches:
                self.mark_error(dispatch, error, message_cls)
        return None

    def _header_problem(self, subject: Any, unsubscribe_url: Optional[str]) -> str:
        """Why a header of this e-mail would carry CR, LF or NUL onto the wire, or ''."""
        return (
            smtp_wire.header_problem('Subject', subject)
            or _sender_problem(self._sender())
            or smtp_wire.header_problem('List-Unsubscribe URL', unsubscribe_url)
        )

    def _settle(self, in_flight, error: Optional[BaseException] = None, *, next_envelope_sent: bool = False) -> None:
        """Read the server's verdict on the e-mail in flight (if any) and mark its dispatch.

        A refused content leaves the transaction open on some servers (Postfix: the next MAIL gets
        ``503 nested MAIL``), so RSET follows, as ``smtplib`` does; when the next envelope is already
        on the wire, the RSET waits until its replies are read (``reset_pending``).
        """
        if in_flight is None:
            return None
        dispatch, message_cls = in_flight
        if error is None:
            try:
                error = content_refusal(self.smtp, self.smtp.getreply())
            except (smtplib.SMTPException, OSError) as lost:
                error = lost
        if error is None:
            self.mark_sent(dispatch)
            return None
        # a lost connection leaves the verdict unknown: retried later, like a timeout
        self._record_failure(dispatch, error, message_cls)
        if self.smtp is not None and isinstance(error, smtplib.SMTPDataError):
            if next_envelope_sent:
                self._thread_state().reset_pending = True
            else:
                self._reset_transaction()
        return None

    def _reset_transaction(self) -> None:
        """RSET; a connection that fails it is dropped (the next e-mail reconnects)."""
        try:
            self.smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop_connection()

    def _send_one(self, dispatch, message_cls, recipient: str, data: bytes) -> None:
        """Send one e-mail waiting for each reply (``sendmail``): servers without PIPELINING."""
        sender = _sender_parts(self._sender())[1]
        if smtp_wire.needs_smtputf8(sender, recipient) and not self.smtp.has_extn('smtputf8'):
            self.mark_failed(
                dispatch,
                PermanentDeliveryError(
                    f'`{dispatch.address}`: a non-ASCII address needs SMTPUTF8, which {self._server()} does not offer'
                ),
            )
            return
        try:
            refused = self._sendmail(sender, recipient, data)
        except (smtplib.SMTPException, OSError) as error:
            self._record_failure(dispatch, error, message_cls)
            return
        if refused:
            self.mark_failed(
                dispatch, RecipientRefusedError(f'`{dispatch.address}` address is rejected by server: {refused}')
            )
        else:
            self.mark_sent(dispatch)

    def _mail_options(self, sender: str, recipient: str) -> list:
        return ['SMTPUTF8'] if smtp_wire.needs_smtputf8(sender, recipient) else []

    def _record_failure(self, dispatch, error: BaseException, message_cls) -> None:
        reason = MessengerException(f'SMTP Error: {describe_smtp_error(error)}')
        if not isinstance(error, (smtplib.SMTPException, OSError)):  # not the server's word: name the e-mail
            reason = MessengerException(f'SMTP Error sending to `{dispatch.address}`: {describe_smtp_error(error)}')
        if is_permanent(error):
            # A 5xx to RCPT refuses the address itself: it counts toward suppressing it (docs/suppression.rst).
            refused = isinstance(error, smtplib.SMTPRecipientsRefused)
            self.mark_failed(dispatch, (RecipientRefusedError if refused else PermanentDeliveryError)(str(reason)))
        else:
            self.mark_error(dispatch, reason, message_cls)
        if is_connection_lost(error) or getattr(self.smtp, 'sock', True) is None:
            self._drop_connection()  # gone, or closed after a 421: the next message reconnects


_LINE_BREAK = re.compile(r'\r\n|\r|\n')  # what the email package's generator turns into CRLF


def envelope_address(to: str) -> str:
    """The bare address of a ``To`` value (``Name <a@b>`` gives ``a@b``), an IDN domain as punycode."""
    if to.isascii():
        return parseaddr(to)[1] if '<' in to else to
    return smtp_wire.envelope_address(to)


def plain_message_bytes(
    sender_header: str,
    to: str,
    subject: str,
    date: str,
    message_id: str,
    text: str,
    unsubscribe_url: Optional[str],
    *,
    headers: Sequence[Tuple[str, str]] = (),
) -> Optional[bytes]:
    """Format a 7bit text/plain e-mail as ``compat32`` would, or return None when that needs encoding or folding.

    Every header value must be ASCII with no line break and fit on one line, and the text must
    be ASCII with lines of at most 998 characters (RFC 5322); otherwise the MIME classes do it.
    """
    headers = [
        ('From', sender_header),
        ('To', to),
        ('Subject', subject),
        ('Date', date),
        ('Message-ID', message_id),
        *_extra_headers(unsubscribe_url, headers),
    ]
    for name, value in headers:
        if not value.isascii() or '\n' in value or '\r' in value or len(name) + len(value) + 2 > 998:
            return None
    if not is_7bit_text(text):
        return None
    head = ''.join(f'{name}: {value}\r\n' for name, value in headers)
    return (
        f'Content-Type: text/plain; charset="us-ascii"\r\nMIME-Version: 1.0\r\n'
        f'Content-Transfer-Encoding: 7bit\r\n{head}\r\n{_LINE_BREAK.sub(chr(13) + chr(10), text)}'
    ).encode('ascii')


def _extra_headers(unsubscribe_url: Optional[str], headers: Sequence[Tuple[str, str]]) -> list:
    """``List-Unsubscribe`` for a bare ``unsubscribe_url`` (1.4.0's parameter), then ``headers``."""
    return [*([('List-Unsubscribe', f'<{unsubscribe_url}>')] if unsubscribe_url else []), *headers]


def is_7bit_text(text: str) -> bool:
    """ASCII with lines of at most 998 characters (RFC 5322): sent as it is, no transfer encoding."""
    return text.isascii() and all(len(line) <= 998 for line in text.splitlines())


def _text_part(text: str, subtype: str) -> MIMEText:
    """A body part: plain 7bit when the text is ASCII with short lines (readable), else UTF-8 base64."""
    if is_7bit_text(text):
        return MIMEText(text, subtype, 'us-ascii')
    return MIMEText(text, subtype, 'utf-8')


def mime_message_id(data: bytes) -> Optional[str]:
    """The ``Message-ID`` header of e-mail bytes built elsewhere (only the headers are parsed), or None."""
    value = BytesHeaderParser(policy=policy.compat32).parsebytes(data).get('Message-ID')
    if value is None:
        return None
    return ' '.join(str(value).split()) or None  # unfolded


@lru_cache(maxsize=16)
def _sender_parts(from_email: str) -> Tuple[str, str, Optional[str]]:
    """Return the From header, the envelope address and the Message-ID domain of a sender."""
    address = smtp_wire.envelope_address(from_email)
    return smtp_wire.header_address(from_email), address, address.rpartition('@')[2] or None


@lru_cache(maxsize=16)
def _sender_problem(from_email: str) -> str:
    return smtp_wire.one_address_problem('Sender (from_email)', from_email)


def _policy_for(to: str):
    """The policy writing an e-mail to ``to``: headers in UTF-8 when its address needs SMTPUTF8."""
    return _UTF8_POLICY if smtp_wire.needs_smtputf8(envelope_address(to)) else _POLICY


_last_date: Tuple[int, str] = (0, '')


def date_header() -> str:
    """``formatdate(localtime=True)``, formatted once a second: it cost more than the rest of a plain e-mail."""
    global _last_date
    now = int(time.time())
    second, text = _last_date
    if second != now:
        text = formatdate(now, localtime=True)
        _last_date = (now, text)
    return text


def address_problem(address: str) -> str:
    """Return why ``address`` cannot receive e-mail, or ''."""
    if not address:
        return 'The recipient has no e-mail address'
    if PLAIN_ADDRESS.match(address):
        return ''  # the common case, without the cost of the full parser
    problem = smtp_wire.one_address_problem('recipient', address)
    if problem:
        return f'`{address}` is not a valid e-mail address: {problem}'
    return ''


def describe_smtp_error(error: BaseException) -> str:
    code = _smtp_code(error)
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        details = '; '.join(
            f'{rcpt}: {code} {msg.decode(errors="replace") if isinstance(msg, bytes) else msg}'
            for rcpt, (code, msg) in error.recipients.items()
        )
        return f'recipient refused ({details})'
    message = getattr(error, 'smtp_error', None)
    if isinstance(message, bytes):
        message = message.decode(errors='replace')
    if code is not None:
        return f'{code} {message}'
    return f'{type(error).__name__}: {error}' if str(error) else type(error).__name__
