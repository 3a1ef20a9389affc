"""Telegram chats and channels through the Bot API: https://core.telegram.org/bots/api

Every call is ``POST <api_url>/bot<token>/<method>`` with a JSON body; the service answers
``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N, "description": "...",
"parameters": {"retry_after": N, "migrate_to_chat_id": N}}``.

Error mapping for a dispatch: 403 (bot blocked, user deactivated, bot kicked) and 400 (chat not
found, and any other bad request) fail it at once; 429 waits ``retry_after`` when it is short and
retries once, otherwise the dispatch is retried after ``retry_after`` and the rest of the batch
waits for a later run; either way the wait is shared with every worker sending as the same bot
(see ``RateLimited`` in :mod:`~sitemessage.messengers.base_http`); 5xx, timeouts and connection
errors are retried. The bot token sits in
the URL path: it is scrubbed from every error text and from ``urllib3``'s debug log.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

from django.utils.translation import gettext_lazy

from ..exceptions import (
    MessengerException,
    MessengerWarmupException,
    PermanentDeliveryError,
    RecipientRefusedError,
    TemporaryDeliveryError,
)
from .base_http import DeferBatch, RateLimited, RequestsMessengerBase, TypeProxy, parse_retry_after

LOGGER = logging.getLogger(__name__)

SLEEP = time.sleep  # tests replace it to skip short 429 waits
CLOCK = time.monotonic

MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units after entity parsing (Bot API, sendMessage)

_START_COMMAND = re.compile(r'/start(?:@\w+)?(?:\s|$)')  # '/start', '/start@MyBot', '/start <payload>'
_NUMERIC_CHAT_ID = re.compile(r'-?\d+')

# HTTP statuses meaning "the bot or the service is not right now", not "this chat is wrong".
_TEMPORARY_CLIENT_ERRORS = {401, 404, 408, 409, 429}


class TelegramMessengerException(MessengerException):
    """An error reported by the Telegram Bot API (``description``, ``error_code``) or on the way to it."""

    description: str = ''
    error_code: Optional[int] = None
    retry_after: Optional[float] = None


class TelegramPermanentError(TelegramMessengerException, PermanentDeliveryError):
    """The service refused this chat for good (blocked, deactivated, kicked, not found, bad request)."""


class TelegramRecipientRefused(TelegramPermanentError, RecipientRefusedError):
    """Telegram refused the chat itself (403: the bot was blocked, the user deactivated): counts toward suppression."""


class TelegramTemporaryError(TelegramMessengerException, TemporaryDeliveryError):
    """Worth retrying later: a server or network error, or a bot-wide problem (e.g. token revoked)."""


class TelegramRateLimited(TelegramTemporaryError, RateLimited):
    """HTTP 429: the bot must wait ``retry_after`` seconds before sending again, on every worker.

    The rest of the run goes back to the queue untouched; :meth:`TelegramMessenger.deferral`
    keeps it there (no request made) until the wait is over.
    """

    requeue = True


_Error = TypeVar('_Error', bound=TelegramMessengerException)


def _telegram_error(
    cls: Type[_Error],
    text: str,
    description: str,
    error_code: Optional[int] = None,
    retry_after: Optional[float] = None,
) -> _Error:
    error = cls(text)
    error.description = description
    error.error_code = error_code
    error.retry_after = retry_after
    return error


def utf16_length(text: str) -> int:
    """Return the length of ``text`` as Telegram counts it (UTF-16 code units)."""
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def split_text(text: str, limit: int = MAX_MESSAGE_LENGTH) -> List[str]:
    """Split ``text`` into parts of at most ``limit`` UTF-16 units; the parts joined give ``text``.

    A part ends after the last paragraph break (blank line) or line break in the second half of
    its window, else after the last space, else at the limit. Parts that are only whitespace,
    which Telegram refuses, are dropped.
    """
    parts = []
    rest = text
    while utf16_length(rest) > limit:
        window = _fitting_prefix(rest, limit)
        cut = _boundary(rest[:window])
        parts.append(rest[:cut])
        rest = rest[cut:]
    parts.append(rest)
    return [part for part in parts if part.strip()] or [text]


def _fitting_prefix(text: str, limit: int) -> int:
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def _boundary(window: str) -> int:
    half = len(window) // 2
    for separator, lowest in (('\n\n', half), ('\n', half), (' ', 1)):
        position = window.rfind(separator)
        if position >= lowest:
            return position + len(separator)
    return len(window)


class TelegramMessenger(RequestsMessengerBase):
    """Send messages to Telegram chats (``'12345678'``) and channels (``'@mychannel'``) as a bot.

    Optional defaults, sent with every message when given: ``parse_mode`` (``'HTML'``,
    ``'MarkdownV2'``, ``'Markdown'``), ``disable_notification``, ``message_thread_id`` (a forum
    topic) and ``link_preview`` (True/False, or a dict passed as ``link_preview_options``).
    """

    alias = 'telegram'
    title = gettext_lazy('Telegram')
    address_attr = 'telegram'
    extra_name = 'telegram'

    api_url = 'https://api.telegram.org'
    # 1.4.0 formatted '%(token)s' and '%(method)s' into it; a subclass's old template still works.
    _tpl_url = '%(api_url)s/bot%(token)s/%(method)s'
    _session_started = False

    max_message_length: int = MAX_MESSAGE_LENGTH
    # A 429 asking to wait at most this many seconds is waited out and the request retried once;
    # a longer wait defers the rest of the batch to a later run.
    retry_after_max_wait: float = 5.0

    _rate_limited_until: float = 0.0  # CLOCK() value; bot-wide, so shared by all threads
    _updates_offset: Optional[int] = None

    def __init__(
        self,
        auth_token: str,
        proxy: TypeProxy = None,
        *,
        parse_mode: Optional[str] = None,
        disable_notification: Optional[bool] = None,
        message_thread_id: Optional[int] = None,
        link_preview: Union[bool, Dict[str, Any], None] = None,
        api_url: Optional[str] = None,
        timeout: Optional[float] = None,
    ):
        super().__init__(proxy, api_url=api_url, timeout=timeout)
        self.auth_token = auth_token
        self.parse_mode = parse_mode
        self.disable_notification = disable_notification
        self.message_thread_id = message_thread_id
        self.link_preview = link_preview

    def get_secrets(self):
        return (self.auth_token,)

    # Bot API calls ----------------------------------------------------------------------------

    def _send_command(
        self, method_name: str, data: Optional[dict] = None, *, http_timeout: Optional[float] = None
    ) -> Any:
        """Call a Bot API method; return its ``result`` or raise :class:`TelegramMessengerException`.

        A 429 with a short ``retry_after`` is waited out and the call made once more.
        """
        url = self._tpl_url % {'api_url': self.api_url.rstrip('/'), 'token': self.auth_token, 'method': method_name}
        kwargs: Dict[str, Any] = {'json': data}
        if http_timeout is not None:
            kwargs['timeout'] = http_timeout
        for attempt in (1, 2):
            try:
                return self._call(url, kwargs)
            except TelegramRateLimited as error:
                wait = error.retry_after if error.retry_after is not None else 1.0
                if attempt == 1 and wait <= self.retry_after_max_wait:
                    LOGGER.info(
                        '%s: rate-limited by Telegram, retrying %s in %s s', self.get_alias(), method_name, wait
                    )
                    SLEEP(wait)
                    self.pause_waited()
                    continue
                self._rate_limited_until = max(self._rate_limited_until, CLOCK() + wait)
                raise

    def _call(self, url: str, kwargs: dict) -> Any:
        try:
            payload = self.request('POST', url, **kwargs)
        except TelegramMessengerException:
            raise
        except MessengerException as error:  # network errors and non-Bot-API replies (e.g. a proxy's)
            cls = TelegramPermanentError if isinstance(error, PermanentDeliveryError) else TelegramTemporaryError
            text = str(error)  # redacted by request()
            description = text[len('Telegram: ') :] if text.startswith('Telegram: ') else text
            raise _telegram_error(cls, text, description, retry_after=getattr(error, 'retry_after', None)) from None
        return payload.get('result')

    def check_response(self, response, payload: Any) -> None:
        """Bot API replies are ``{"ok": ...}`` envelopes; anything else is an error too."""
        super().check_response(response, payload)
        if not isinstance(payload, dict) or 'ok' not in payload:
            shown = payload if payload is not None else response.text
            text = f'Telegram: unexpected reply: {str(shown)[:300]}'
            raise _telegram_error(TelegramTemporaryError, text, text)
        if not payload['ok']:
            raise self._error_from(payload, response.status_code)

    def payload_error(self, response, payload: Any) -> Optional[dict]:
        """A failed call answers ``{"ok": false, "error_code", "description", "parameters"}``."""
        failed = response.status_code >= 400 or (isinstance(payload, dict) and payload.get('ok') is False)
        return payload if failed and isinstance(payload, dict) and 'description' in payload else None

    def map_payload_error(self, response, error: dict) -> TelegramMessengerException:
        return self._error_from(error, response.status_code, response.headers.get('Retry-After'))

    def _error_from(self, payload: dict, status: int, header_retry_after: Any = None) -> TelegramMessengerException:
        code = payload.get('error_code') or status
        description = str(payload.get('description') or f'HTTP {code}')
        parameters = payload.get('parameters') or {}
        retry_after = parse_retry_after(parameters.get('retry_after', header_retry_after))
        details = f'error {code}'
        if parameters.get('migrate_to_chat_id'):
            details += f'; the chat moved to {parameters["migrate_to_chat_id"]}'
        if retry_after is not None:
            details += f'; retry after {retry_after:g} s'
        text = f'Telegram: {description} ({details})'
        cls: Type[TelegramMessengerException]
        if code == 429:
            cls = TelegramRateLimited
        elif code in _TEMPORARY_CLIENT_ERRORS or not 400 <= code < 500:
            cls = TelegramTemporaryError
        elif code == 403:  # blocked, deactivated, kicked: the chat is refused, not this message
            cls = TelegramRecipientRefused
        else:  # 400 chat not found and other bad requests
            cls = TelegramPermanentError
        return _telegram_error(cls, text, description, code, retry_after)

    def _verify_bot(self) -> dict:
        """Return the bot's own user (``getMe``); fails when the token is wrong."""
        return self._send_command('getMe')

    # Delivery -------------------------------------------------------------------------------------

    @property
    def pause_max_wait(self) -> float:  # type: ignore[override]
        """A shared pause this short is waited out, as a short 429 of one's own is."""
        return self.retry_after_max_wait

    def rate_limit_left(self) -> float:
        """Return how many seconds Telegram asked this bot to wait before sending (0: none), here or on any worker."""
        return max(self._rate_limited_until - CLOCK(), self.shared_pause_left(), 0.0)

    def wait_out(self, seconds: float) -> None:
        SLEEP(seconds)

    def pause_error(self, seconds: float) -> DeferBatch:
        text = f'bot rate-limited for {seconds:.0f} s more'
        return _telegram_error(TelegramRateLimited, f'Telegram: {text}', text, 429, seconds)

    def warm_up(self) -> None:
        """Verify the bot (``getMe``) once per run; a rate-limited bot skips it (sends are deferred)."""
        self._session_started = False
        if self.rate_limit_left():
            return
        try:
            self._verify_bot()
        except TelegramRateLimited:
            return  # deferral() holds every dispatch back until the wait is over
        except TelegramMessengerException as error:
            detail = f'{error.description} (error {error.error_code})' if error.error_code else error.description
            raise MessengerWarmupException(f'Telegram Error: {detail}') from None
        self._session_started = True

    def after_send(self) -> None:
        self._session_started = False
        super().after_send()

    def deferral(self) -> Optional[DeferBatch]:
        """While Telegram rate-limits the bot (in any run, on any thread, on any worker), dispatches wait."""
        left = self._rate_limited_until - CLOCK()  # this process knows it without reading the cache
        if left > 0:
            return self.pause_error(left)
        return super().deferral()

    def dispatch_problem(self, dispatch) -> str:
        return '' if dispatch.address else 'Telegram: the recipient has no chat id'

    def _build_message(self, to: Optional[str], text: str) -> dict:
        chat_id: Any = to
        if isinstance(to, str) and _NUMERIC_CHAT_ID.fullmatch(to.strip()):
            chat_id = int(to)
        msg = {'chat_id': chat_id, 'text': text}
        if self.parse_mode is not None:
            msg['parse_mode'] = self.parse_mode
        if self.disable_notification is not None:
            msg['disable_notification'] = bool(self.disable_notification)
        if self.message_thread_id is not None:
            msg['message_thread_id'] = self.message_thread_id
        if isinstance(self.link_preview, dict):
            msg['link_preview_options'] = dict(self.link_preview)
        elif self.link_preview is not None:
            msg['link_preview_options'] = {'is_disabled': not self.link_preview}
        return msg

    def _send_message(self, msg: Any, to: Optional[str] = None) -> Any:
        """Send a message built by :meth:`_build_message`; a long text goes as several messages.

        Returns the sent Message object, or a list of them when the text was split.
        """
        if not isinstance(msg, dict) or not isinstance(msg.get('text'), str):
            return self._send_command('sendMessage', msg)
        results = [
            self._send_command('sendMessage', dict(msg, text=part))
            for part in split_text(msg['text'], self.max_message_length)
        ]
        return results[0] if len(results) == 1 else results

    def provider_id(self, result: Any) -> Any:
        """The ``message_id`` of the sent message (of its first part, when a long text went as several)."""
        first = result[0] if isinstance(result, list) and result else result
        return super().provider_id(first.get('message_id') if isinstance(first, dict) else None)

    # Updates --------------------------------------------------------------------------------------

    def get_updates(self, offset: Optional[int] = None, timeout: int = 0) -> list:
        """Return the bot's pending updates (``getUpdates``) and remember the next offset.

        The next call sends that offset, which tells Telegram the updates returned here were
        handled (acknowledged). ``timeout`` is the long-polling wait in seconds.
        """
        data: Dict[str, Any] = {'timeout': timeout}
        if offset is None:
            offset = self._updates_offset
        if offset is not None:
            data['offset'] = offset
        http_timeout = None
        if timeout:
            base = self.get_timeout() or 0
            http_timeout = base + timeout
        updates = self._send_command('getUpdates', data, http_timeout=http_timeout) or []
        update_ids = [
            update['update_id']
            for update in updates
            if isinstance(update, dict) and isinstance(update.get('update_id'), int)
        ]
        if update_ids:
            self._updates_offset = max(update_ids) + 1
        return updates

    def get_chat_ids(self) -> list:
        """Return the unique chat ids of ``/start`` messages (deep links ``/start <payload>`` too).

        Updates without a text message (edited messages, channel posts, callback queries,
        stickers...) are skipped. The updates are acknowledged: a later call sees only new ones.
        """
        chat_ids = []
        for update in self.get_updates():
            message = update.get('message') if isinstance(update, dict) else None
            if not isinstance(message, dict):
                continue
            text = message.get('text')
            if not isinstance(text, str) or not _START_COMMAND.match(text):
                continue
            chat_id = (message.get('chat') or {}).get('id')
            if chat_id is not None and chat_id not in chat_ids:
                chat_ids.append(chat_id)
        return chat_ids
