"""The base of messengers that speak to an HTTP API through ``requests``.

One place for sessions (one per thread), timeouts, proxies, error mapping and redaction:
tokens and secrets never reach ``DispatchError`` texts, logs or exceptions.

Error mapping: connection errors, timeouts, HTTP 408, 429 and 5xx are temporary (retried,
honouring ``Retry-After``); any other 4xx is permanent (the dispatch fails at once).
Subclasses read the service's own error payload through :meth:`payload_error` and
:meth:`map_payload_error`.

Provider pauses: a :class:`RateLimited` error (HTTP 429, or what a subclass maps from the
service's rate-limit codes) is written to the shared limiter
(:func:`sitemessage.delivery.ratelimit.pause`, keyed by alias and a fingerprint of the
credentials), so every worker on every host stops sending through the same account until the
wait is over, not only the one that was told.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Set, Union
from urllib.parse import quote, quote_plus

from .. import VERSION
from ..delivery import ratelimit
from ..exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    RecipientRefusedError,
    TemporaryDeliveryError,
)
from ..optional import import_optional
from ..settings import get_setting
from .base import MessengerBase, PerThread, describe_error

LOGGER = logging.getLogger(__name__)

SLEEP: Callable[[float], None] = time.sleep  # waiting out a short shared pause; tests replace it

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


class DeferBatch(TemporaryDeliveryError):
    """Raised by a hook when the service refuses the account, not one dispatch: the rest of the run waits.

    The dispatch being sent is retried after ``retry_after`` seconds (when known). The ones
    left in the run are marked in error with the same ``retry_after``, or, when ``requeue`` is
    set, go back to the queue without an attempt counted (the messenger then holds them back
    itself through :meth:`RequestsMessengerBase.deferral` until the wait is over).
    """

    requeue: bool = False


class RateLimited(DeferBatch):
    """The service limits the account's rate (HTTP 429, a rate-limit code): every worker pauses.

    Raised from :meth:`RequestsMessengerBase.request`, it is first written to the shared limiter
    for ``retry_after`` seconds (the messenger's ``pause_default`` when the service gives none);
    then it defers the rest of the run as any :class:`DeferBatch` does.
    """


class _ThreadState:
    """What one connection (thread) keeps between :meth:`~RequestsMessengerBase.before_send` and
    :meth:`~RequestsMessengerBase.after_send`."""

    session: Any = None  # the requests.Session of this connection
    deferral: Optional[DeferBatch] = None  # set once the service refused the account in this run
    pause_until: float = 0.0  # the shared pause as last read or written (epoch seconds)
    pause_read_at: Optional[float] = None  # when it was read (None: read it before the next dispatch)
    pause_waited: float = 0.0  # a pause ending at or before this was waited out by this connection


class RequestsMessengerBase(MessengerBase):
    """Base for HTTP API messengers: it owns the delivery loop, sessions, error mapping and redaction.

    A messenger built on it implements three hooks: :meth:`_build_message` (the payload),
    :meth:`_send_message` (the endpoint: one :meth:`request` per dispatch) and the reply's
    parsing, :meth:`payload_error` / :meth:`map_payload_error` (errors the service puts in its
    JSON). Optional: :meth:`warm_up` (verify credentials), :meth:`dispatch_problem` (refuse an
    address without a request) and :meth:`deferral` (hold the queue back while rate-limited).
    ``api_url`` can be overridden per instance (tests use loopback).
    """

    timeout: Optional[float] = None  # None: SITEMESSAGE_HTTP_TIMEOUT
    api_url: str = ''
    extra_name: str = 'requests'  # the pip extra naming this messenger's dependencies

    # The shared pause (see RateLimited): a pause this short is waited out by the connection that
    # finds it (0: never, the rest of the run is deferred); a connection reads the pause before
    # each unit of work and at most every `pause_check_interval` seconds within one; a rate-limit
    # error without a retry time pauses for `pause_default` seconds.
    pause_max_wait: float = 0.0
    pause_check_interval: float = 1.0
    pause_default: float = 10.0

    _thread = PerThread(_ThreadState)

    def __init__(
        self, proxy: TypeProxy = None, *, api_url: Optional[str] = None, timeout: Optional[float] = None, **kwargs
    ):
        self.lib = import_optional('requests', extra=self.extra_name)
        self.proxy = proxy
        if api_url is not None:
            self.api_url = api_url
        if timeout is not None:
            self.timeout = timeout

    # Secrets ------------------------------------------------------------------------------------

    def get_secrets(self) -> Iterable[str]:
        """Return the values to scrub from every error text (tokens, keys)."""
        return ()

    def redact(self, text: str, secrets: Optional[Iterable[str]] = None) -> str:
        """Return ``text`` without ``secrets`` (by default :meth:`get_secrets`), as they are and URL-encoded."""
        for secret in sorted(
            map(str, filter(None, self.get_secrets() if secrets is None else secrets)), key=len, reverse=True
        ):  # a shorter secret may be part of a longer one
            # requests errors echo URLs, where a secret appears percent-encoded ('|' -> '%7C')
            for form in dict.fromkeys((secret, quote_plus(secret), quote(secret, safe=''))):
                text = text.replace(form, '***')
        return text

    def scrub(self, error: BaseException, secrets: Optional[Iterable[str]] = None) -> BaseException:
        """Redact ``error``'s text and text attributes in place (its class and fields stay); return it."""
        error.args = tuple(self.redact(arg, secrets) if isinstance(arg, str) else arg for arg in error.args)
        for name, value in vars(error).items():
            if isinstance(value, str):
                setattr(error, name, self.redact(value, secrets))
        return error

    @contextmanager
    def scrubbed_errors(self, secrets: Optional[Iterable[str]] = None) -> Iterator[None]:
        """Let no messenger error leave the block with a secret in it: the boundary of redaction."""
        try:
            yield
        except MessengerException as error:
            self.scrub(error, secrets)
            raise

    # Connection ---------------------------------------------------------------------------------

    def before_send(self) -> None:
        """Open this connection's HTTP session and :meth:`warm_up`; a failed warm-up closes it again."""
        state = self._thread
        self._close_session()  # left over by a run on this thread that did not cool down
        state.deferral = None
        state.pause_read_at = None
        state.session = self._new_session()
        try:
            self.warm_up()
        except MessengerWarmupException as error:
            self._close_session()
            raise self.scrub(error) from None  # the original's text may hold a secret
        except MessengerException as error:
            self._close_session()
            raise MessengerWarmupException(self.redact(str(error))) from error
        except BaseException:
            self._close_session()
            raise

    def warm_up(self) -> None:
        """Hook: verify the credentials (a request on the open session); raise a messenger error if refused."""

    def after_send(self) -> None:
        """Close this connection's HTTP session."""
        self._thread.deferral = None
        self._close_session()

    def _new_session(self) -> Any:
        protect_secrets_in_logs(self.get_secrets())
        session = self.lib.Session()
        session.headers['User-Agent'] = f'django-sitemessage/{".".join(map(str, VERSION))}'
        return session

    def _close_session(self) -> None:
        state = self._thread
        session, state.session = state.session, None
        if session is not None:
            close_connections(session)

    def _get_common_params(self) -> dict:
        proxy = self.proxy() if callable(self.proxy) else self.proxy
        return {'timeout': self.get_timeout(), 'proxies': proxy or None}

    def get_timeout(self) -> Optional[float]:
        """Seconds to wait for the service: the constructor's ``timeout``, else ``SITEMESSAGE_HTTP_TIMEOUT``."""
        return get_setting(
            'HTTP_TIMEOUT', value=self.timeout, check='seconds', argument=f'{type(self).__name__}(timeout=...)'
        )

    # Requests ---------------------------------------------------------------------------------

    def request(self, method: str, url: str, **kwargs) -> Any:
        """Make a request; return the decoded JSON (or text). Errors are mapped and redacted.

        Made on the connection's session between :meth:`before_send` and :meth:`after_send`;
        outside them (``get_updates()``, token helpers) on a session of its own, closed after it.
        """
        with self.scrubbed_errors():
            session = self._thread.session
            try:
                if session is not None:
                    return self._request(session, method, url, kwargs)
                session = self._new_session()
                try:
                    return self._request(session, method, url, kwargs)
                finally:
                    close_connections(session)
            except RateLimited as error:
                self.share_pause(error.retry_after)
                raise

    def _request(self, session, method: str, url: str, kwargs: dict) -> Any:
        try:
            # kwargs win over the common ones (e.g. a longer timeout for a long poll)
            response = session.request(method, url, **{**self._get_common_params(), **kwargs})
        except self.lib.exceptions.RequestException as error:
            # from None: the cause's text holds the URL, and with it any token
            raise TemporaryDeliveryError(f'{self.title}: {type(error).__name__}: {error}') from None
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
        self.raise_for_status(
            response.status_code,
            self.describe_error(response, payload),
            retry_after=response.headers.get('Retry-After'),
        )

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
        text = f'{self.title}: HTTP {status}: {description}'
        if status == 429:
            raise RateLimited(text, retry_after=parse_retry_after(retry_after))
        if status == 408 or status >= 500:
            raise TemporaryDeliveryError(text, retry_after=parse_retry_after(retry_after))
        raise PermanentDeliveryError(text)

    def get(self, url: str, json: bool = True) -> Any:
        """GET ``url``; return decoded JSON (or the text with ``json=False``)."""
        result = self.request('GET', url)
        return result if json or isinstance(result, str) else str(result)

    def post(self, url: str, data: Optional[dict] = None) -> Any:
        """POST form-encoded ``data`` to ``url``; return decoded JSON."""
        return self.request('POST', url, data=data)

    # The shared pause ---------------------------------------------------------------------------

    def rate_limit_scope(self) -> Iterable[str]:
        """Hook: the values the service's rate limit applies to (by default the credentials)."""
        return self.get_secrets()

    def pause_key(self) -> str:
        """The shared limiter's key of this account: the alias and a fingerprint, never a secret itself."""
        scope = '\0'.join(str(value) for value in self.rate_limit_scope() if value)
        return f'{self.get_alias()}:{hashlib.sha256(scope.encode()).hexdigest()[:16]}'

    def share_pause(self, seconds: Optional[float]) -> float:
        """Make every worker stop sending through this account for ``seconds``; return when it ends (epoch)."""
        wait = self.pause_default if seconds is None else seconds
        LOGGER.warning('%s: the service asks to wait %g s; pausing every worker', self.get_alias(), wait)
        until = ratelimit.pause(self.pause_key(), wait)
        state = self._thread
        state.pause_until, state.pause_read_at = max(state.pause_until, until), ratelimit.CLOCK()
        return until

    def shared_pause_left(self, refresh: bool = False) -> float:
        """Seconds left of the shared pause, read from the cache once per unit of work (or when asked).

        A pause this connection already waited out counts as over.
        """
        state = self._thread
        now = ratelimit.CLOCK()
        if refresh or state.pause_read_at is None or now - state.pause_read_at >= self.pause_check_interval:
            state.pause_until, state.pause_read_at = ratelimit.paused_until(self.pause_key()), now
        if state.pause_until <= state.pause_waited:
            return 0.0
        return max(state.pause_until - now, 0.0)

    def pause_waited(self) -> None:
        """Note that this connection waited out the pause it knows of (it slept, then retried)."""
        state = self._thread
        state.pause_waited = max(state.pause_waited, state.pause_until)

    def pause_error(self, seconds: float) -> DeferBatch:
        """Hook: the error that defers the rest of the run while the shared pause lasts ``seconds`` more."""
        text = f'{self.title}: rate-limited for {seconds:.0f} s more (the service paused every worker)'
        return RateLimited(text, retry_after=seconds)

    def wait_out(self, seconds: float) -> None:
        """Sleep through a short pause; a subclass whose tests replace its own sleep overrides it."""
        SLEEP(seconds)

    # Delivery ---------------------------------------------------------------------------------

    def send_many(self, items) -> None:
        """Deliver a unit of work; the shared pause is read afresh before its first dispatch."""
        self._thread.pause_read_at = None
        super().send_many(items)

    def send_test_message(self, to: Optional[str], text: str) -> Any:
        with self.scrubbed_errors():
            return super().send_test_message(to, text)

    def send(self, message_cls, message_model, dispatch_models) -> None:
        """Deliver each dispatch with :meth:`deliver`; once the service defers the run, the rest waits."""
        for index, dispatch in enumerate(dispatch_models):
            deferral = self.deferral()
            if deferral is not None:
                self.defer(dispatch_models[index:], deferral, message_cls)
                return
            problem = self.dispatch_problem(dispatch)
            if problem:
                self.mark_failed(dispatch, problem)
                continue
            self.deliver(dispatch, message_cls)

    def dispatch_problem(self, dispatch) -> str:
        """Hook: return why ``dispatch`` cannot be sent at all ('' if it can); it then fails without a request."""
        return ''

    def deferral(self) -> Optional[DeferBatch]:
        """Hook: return why the rest of the run must wait, or None.

        By default the :class:`DeferBatch` of this run, else the shared pause of the account
        (another worker was told to wait): a short one (``pause_max_wait``) is waited out here.
        """
        if self._thread.deferral is not None:
            return self._thread.deferral
        left = self.shared_pause_left()
        if not left:
            return None
        if left > self.pause_max_wait:
            return self.pause_error(left)
        self.wait_out(left)
        self.pause_waited()
        return None

    def defer(self, dispatches, reason: DeferBatch, message_cls) -> None:
        """Mark ``dispatches`` as not attempted because of ``reason`` (see :class:`DeferBatch`)."""
        if reason.requeue:
            LOGGER.warning('%s: %s; %d dispatch(es) deferred', self.get_alias(), reason, len(dispatches))
            for dispatch in dispatches:
                self.mark_pending(dispatch)
            return
        for dispatch in dispatches:
            self.mark_error(
                dispatch,
                f'Not attempted: an earlier post in this run was refused: {reason}',
                message_cls,
                retry_after=reason.retry_after,
            )

    def deliver(self, dispatch, message_cls, call: Optional[Callable[[], Any]] = None) -> None:
        """Make the delivery ``call`` for one dispatch (by default the build and send hooks) and mark it.

        A permanent error fails the dispatch, a temporary one is retried (after the service's
        ``retry_after`` when given), any other messenger error is retried. A :class:`DeferBatch`
        is retried and makes the rest of the run wait.
        """
        if call is None:

            def call():
                return self._send_message(
                    self._build_message(dispatch.address, dispatch.message_cache), to=dispatch.address
                )

        try:
            result = call()
        except DeferBatch as error:
            self._thread.deferral = error
            self.mark_error(dispatch, error, message_cls, retry_after=error.retry_after)
        except PermanentDeliveryError as error:
            self.mark_failed(dispatch, error)
        except TemporaryDeliveryError as error:
            self.mark_error(dispatch, error, message_cls, retry_after=error.retry_after)
        except MessengerException as error:
            self.mark_error(dispatch, error, message_cls)
        else:
            self.mark_sent(dispatch, provider_id=self.provider_id(result))

    def provider_id(self, result: Any) -> Any:
        """Hook: return the service's id of the message from what :meth:`_send_message` returned (None: none).

        Stored on the dispatch (``provider_message_id``); by default a plain id (text or number)
        is taken as it is, and a JSON object's ``id``.
        """
        if isinstance(result, dict):
            result = result.get('id')
        return result if isinstance(result, (str, int)) and not isinstance(result, bool) else None

    # Where error texts are recorded: the other boundary of redaction.

    def mark_error(self, dispatch, error_log: Any, message_cls=None, *, retry_after: Optional[float] = None) -> None:
        super().mark_error(dispatch, self.redact(describe_error(error_log)), message_cls, retry_after=retry_after)

    def mark_failed(self, dispatch, error_log: Any) -> None:
        text = self.redact(describe_error(error_log))
        # A refused address keeps its kind (it counts toward suppressing the address); only its text is redacted.
        super().mark_failed(
            dispatch, RecipientRefusedError(text) if isinstance(error_log, RecipientRefusedError) else text
        )


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


def close_connections(session: Any) -> None:
    """Close ``session`` and, now, the connections it keeps alive.

    ``Session.close()`` only forgets urllib3 2's connection pools, which close their sockets when
    garbage-collected: late, or never while a logged error's traceback still refers to them.
    """
    for adapter in session.adapters.values():
        managers = [getattr(adapter, 'poolmanager', None), *getattr(adapter, 'proxy_manager', {}).values()]
        for pools in [getattr(manager, 'pools', None) for manager in managers]:
            if pools is None:
                continue
            for key in list(pools.keys()):
                pool = pools.get(key)
                if pool is not None:
                    pool.close()
    session.close()
