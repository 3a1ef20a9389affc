"""The base of messengers that speak to an HTTP API through ``requests``.

One place for sessions (one per thread), timeouts, proxies, error mapping and redaction:
tokens and secrets never reach ``DispatchError`` texts, logs or exceptions.

Error mapping: connection errors, timeouts, HTTP 408, 429 and 5xx are temporary (retried,
honouring ``Retry-After``); any other 4xx is permanent (the dispatch fails at once).
Subclasses read the service's own error payload through :meth:`payload_error` and
:meth:`map_payload_error`.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Set, Union
from urllib.parse import quote

from ..exceptions import MessengerException, PermanentDeliveryError, TemporaryDeliveryError
from ..settings import get_setting
from ..optional import import_optional
from .base import MessengerBase

TypeProxy = Union[Dict[str, str], Callable[[], Dict[str, str]], None]

# Loggers that write request URLs or headers (and so tokens) at DEBUG level.
_LEAKY_LOGGERS = ('urllib3.connectionpool', 'requests_oauthlib.oauth1_auth', 'oauthlib.oauth1.rfc5849')


class _RedactSecrets(logging.Filter):
    """Scrub registered secrets from third-party debug log records."""

    def __init__(self):
        super().__init__()
        self.secrets: Set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            redacted = text
            for secret in sorted(self.secrets, key=len, reverse=True):  # a shorter one may be inside it
                redacted = redacted.replace(secret, '***')
            if redacted != text:
                record.msg, record.args = redacted, ()
        return True


_LOG_FILTER = _RedactSecrets()
_LOG_FILTER_LOCK = threading.Lock()


def protect_secrets_in_logs(secrets: Iterable[str]) -> None:
    """Make sure ``secrets`` (as they are and URL-encoded) never reach urllib3/oauthlib logs."""
    with _LOG_FILTER_LOCK:
        for secret in secrets:
            if secret:
                _LOG_FILTER.secrets.update({str(secret), quote(str(secret), safe='')})
        for name in _LEAKY_LOGGERS:
            logger = logging.getLogger(name)
            if _LOG_FILTER not in logger.filters:
                logger.addFilter(_LOG_FILTER)


class RequestsMessengerBase(MessengerBase):
    """Base for HTTP API messengers; ``api_url`` can be overridden per instance (tests use loopback)."""

    timeout: Optional[float] = None  # None: SITEMESSAGE_HTTP_TIMEOUT
    api_url: str = ''
    extra_name: str = 'requests'  # the pip extra naming this messenger's dependencies

    def __init__(self, proxy: TypeProxy = None, *, api_url: Optional[str] = None, timeout: Optional[float] = None,
                 **kwargs):
        self.lib = import_optional('requests', extra=self.extra_name)
        self.proxy = proxy
        if api_url is not None:
            self.api_url = api_url
        if timeout is not None:
            self.timeout = timeout
        self._sessions = threading.local()

    # Secrets and sessions -------------------------------------------------------------------------

    def get_secrets(self) -> Iterable[str]:
        """Return the values to scrub from every error text (tokens, keys)."""
        return ()

    def redact(self, text: str) -> str:
        from urllib.parse import quote, quote_plus
        for secret in self.get_secrets():
            if secret:
                # requests errors echo URLs, where a secret appears percent-encoded ('|' -> '%7C')
                for form in dict.fromkeys((str(secret), quote_plus(str(secret)), quote(str(secret), safe=''))):
                    text = text.replace(form, '***')
        return text

    def _session(self):
        sessions = self.__dict__.get('_sessions')
        if sessions is None:
            sessions = self.__dict__.setdefault('_sessions', threading.local())
        session = getattr(sessions, 'session', None)
        if session is None:
            protect_secrets_in_logs(self.get_secrets())
            session = sessions.session = self.lib.Session()
            from .. import VERSION
            session.headers['User-Agent'] = f'django-sitemessage/{".".join(map(str, VERSION))}'
        return session

    def _get_common_params(self) -> dict:
        proxy = self.proxy() if callable(self.proxy) else self.proxy
        timeout = self.timeout if self.timeout is not None else get_setting('HTTP_TIMEOUT')
        return {'timeout': timeout, 'proxies': proxy or None}

    # Requests ---------------------------------------------------------------------------------

    def request(self, method: str, url: str, **kwargs) -> Any:
        """Make a request; return the decoded JSON (or text). Errors are mapped and redacted."""
        try:
            # kwargs win over the common ones (e.g. a longer timeout for a long poll)
            response = self._session().request(method, url, **{**self._get_common_params(), **kwargs})
        except self.lib.exceptions.RequestException as error:
            # from None: the cause's text holds the URL, and with it any token
            raise TemporaryDeliveryError(self.redact(f'{self.title}: {type(error).__name__}: {error}')) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        self.check_response(response, payload)
        return payload if payload is not None else response.text

    def check_response(self, response, payload: Any) -> None:
        """Raise for an unsuccessful response: the service's own error payload first, then the status."""
        error = self.payload_error(response, payload)
        if error is not None:
            raise self.map_payload_error(response, error)
        if response.status_code < 400:
            return
        self.raise_for_status(response.status_code, self.describe_error(response, payload),
                              retry_after=response.headers.get('Retry-After'))

    def payload_error(self, response, payload: Any) -> Optional[dict]:
        """Hook: return the error object the service put in its JSON reply (often with HTTP 200)."""
        return None

    def map_payload_error(self, response, error: dict) -> MessengerException:
        """Hook: turn what :meth:`payload_error` found into a temporary or a permanent error."""
        raise NotImplementedError(f'{type(self).__name__} must implement map_payload_error()')

    def describe_error(self, response, payload: Any) -> str:
        return (response.text or '')[:300]

    def raise_for_status(self, status: int, description: str, retry_after: Any = None) -> None:
        """Raise a temporary error for 408, 429 and 5xx, a permanent one for other 4xx."""
        text = self.redact(f'{self.title}: HTTP {status}: {description}')
        if status in (408, 429) or status >= 500:
            raise TemporaryDeliveryError(text, retry_after=parse_retry_after(retry_after))
        raise PermanentDeliveryError(text)

    def get(self, url: str, json: bool = True) -> Any:
        """GET ``url``; return decoded JSON (or the text with ``json=False``)."""
        result = self.request('GET', url)
        return result if json or isinstance(result, str) else str(result)

    def post(self, url: str, data: Optional[dict] = None) -> Any:
        """POST form-encoded ``data`` to ``url``; return decoded JSON."""
        return self.request('POST', url, data=data)

    # Sending ----------------------------------------------------------------------------------

    def _build_message(self, text: str, to: Optional[str] = None) -> Any:
        return text

    def _send_message(self, msg: Any, to: Optional[str] = None) -> Any:
        raise NotImplementedError(f'{type(self).__name__} must implement _send_message()')

    def _test_message(self, to: str, text: str) -> Any:
        return self._send_message(self._build_message(text, to=to), to=to)

    def send(self, message_cls, message_model, dispatch_models) -> None:
        """Send each dispatch; permanent errors fail it, temporary ones are retried later."""
        for dispatch in dispatch_models:
            self.deliver(dispatch, message_cls)

    def deliver(self, dispatch, message_cls, call: Optional[Callable[[], Any]] = None) -> None:
        """Make the delivery ``call`` for one dispatch (by default ``_send_message``) and mark it.

        A permanent error fails the dispatch, a temporary one is retried (after the service's
        ``retry_after`` when given), any other messenger error is retried with its text redacted.
        """
        if call is None:
            def call():
                return self._send_message(self._build_message(dispatch.message_cache, to=dispatch.address),
                                          to=dispatch.address)
        try:
            call()
        except PermanentDeliveryError as error:
            self.mark_failed(dispatch, error)
        except TemporaryDeliveryError as error:
            self.mark_error(dispatch, error, message_cls, retry_after=error.retry_after)
        except MessengerException as error:
            self.mark_error(dispatch, MessengerException(self.redact(str(error))), message_cls)
        else:
            self.mark_sent(dispatch)


def parse_retry_after(value: Any) -> Optional[float]:
    """Return seconds from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if value in (None, ''):
        return None
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        pass
    from email.utils import parsedate_to_datetime
    from django.utils import timezone
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    return max((when - timezone.now()).total_seconds(), 0.0)
