"""Post to X (formerly Twitter) through API v2: ``POST /2/tweets`` signed with OAuth 1.0a user context.

API reference: https://docs.x.com/x-api/posts/create-post
Signing requests: https://docs.x.com/resources/fundamentals/authentication/oauth-1-0a/authorizing-a-request
Counting characters: https://docs.x.com/resources/fundamentals/counting-characters

Why not the ``twitter`` package (Python Twitter Tools), which 1.4.0 used: it can reach the endpoint
(``Twitter(domain='api.x.com', api_version='2', format='').tweets(_json={...}, _method='POST')``),
but for a JSON body it puts the OAuth parameters in the query string, never in the
``Authorization`` header X documents for v2; it speaks through ``urllib``, so it shares none of
:class:`~sitemessage.messengers.base_http.RequestsMessengerBase`'s sessions, proxies (dict or
callable), timeout setting or error mapping; with ``format=''`` it returns the raw response text;
and its ``TwitterHTTPError`` text repeats the signed query, API key and access token included.
So requests are signed by ``requests-oauthlib`` (``OAuth1``, HMAC-SHA1, header transport) on the
shared ``requests`` session. The JSON body is not part of the OAuth signature (RFC 5849 3.4.1.3.1:
only form-encoded bodies are).
"""

from __future__ import annotations

import re
import time
import unicodedata
from typing import Any, Optional

from django.utils.translation import gettext_lazy

from ..exceptions import MessengerWarmupException, PermanentDeliveryError
from ..optional import import_optional, stand_in_module
from .base_http import DeferBatch, RateLimited, RequestsMessengerBase, TypeProxy, parse_retry_after

URL_LENGTH = 23  # every URL counts as a t.co link of this length
MAX_LENGTH = 280

_URL = re.compile(r'https?://\S+', re.IGNORECASE)
_URL_TRAILING = '.,:;!?\'")]}>'
# twitter-text v3 configuration: these code points weigh 1, all others 2.
_LIGHT_RANGES = ((0x0000, 0x10FF), (0x2000, 0x200D), (0x2010, 0x201F), (0x2032, 0x2037))
_ZWJ = 0x200D


def _is_light(code: int) -> bool:
    return any(low <= code <= high for low, high in _LIGHT_RANGES)


def _is_emoji_modifier(code: int) -> bool:
    # variation selectors, skin tones, keycap, tag characters: part of the emoji before them
    return 0xFE00 <= code <= 0xFE0F or 0x1F3FB <= code <= 0x1F3FF or code == 0x20E3 or 0xE0020 <= code <= 0xE007F


def _weighted_length(text: str) -> int:
    total = 0
    previous_heavy = joined = flag_open = False
    for char in text:
        code = ord(char)
        if joined:  # the code point after a ZWJ joins the emoji before it
            joined = False
            continue
        if previous_heavy and code == _ZWJ:
            joined = True
            continue
        if _is_emoji_modifier(code):
            continue
        if 0x1F1E6 <= code <= 0x1F1FF:  # two regional indicators make one flag
            flag_open = not flag_open
            if not flag_open:
                continue
        else:
            flag_open = False
        light = _is_light(code)
        total += 1 if light else 2
        previous_heavy = not light
    return total


def tweet_length(text: str) -> int:
    """Return the length of ``text`` as X counts it (approximately).

    Follows twitter-text v3: text is NFC-normalized; code points of Latin and most European
    scripts, general punctuation and the like weigh 1, all others (CJK, emoji) 2; an emoji
    sequence (ZWJ, skin tone, flag) counts once; each ``http(s)://`` URL counts 23. Approximations:
    URLs without a scheme (``example.com``) are counted letter by letter, while X counts them 23;
    rare emoji sequences may differ by a character or two. X has the last word: a text it finds
    too long is refused with its own message.
    """
    text = unicodedata.normalize('NFC', text)
    length = position = 0
    for match in _URL.finditer(text):
        url = match.group().rstrip(_URL_TRAILING)
        length += _weighted_length(text[position : match.start()]) + URL_LENGTH
        position = match.start() + len(url)
    return length + _weighted_length(text[position:])


class AccountWideError(DeferBatch):
    """X refused the account or app, not the post (HTTP 401, 429): the rest of the run waits too."""


class AccountRateLimited(AccountWideError, RateLimited):
    """HTTP 429: a rate limit or usage cap of the account or app; every worker waits for its reset."""


class TwitterMessenger(RequestsMessengerBase):
    """Post tweets as the user owning ``access_token``; an address makes it a mention (``@to text``).

    ``api_key``/``api_secret`` are the app's consumer keys, ``access_token``/``access_token_secret``
    the user's (generated with read and write permission). ``api_url`` points elsewhere (tests use
    loopback). ``max_length`` is the character limit checked before posting (``None``: leave it to
    X, e.g. for Premium accounts allowed longer posts). With ``verify_credentials`` the warm-up
    asks ``GET /2/users/me`` whether X accepts the credentials; it is off by default because that
    read request counts against the account's (paid, tiered) quota on every run.

    Errors: 401 (credentials refused) and 429 (rate limit or usage cap; retried when
    ``x-rate-limit-reset`` or the 24-hour limit resets) stop the rest of the run, and the
    dispatches are retried later (a 429 pauses every worker posting as the same user and app);
    403 (e.g. duplicate content) and other 4xx fail that dispatch; 408, 5xx, timeouts and
    connection errors are retried.

    For 1.4.0 projects' test suites: built while ``sys.modules['twitter']`` is a stand-in (a
    ``unittest.mock`` object), or with such an object assigned to ``lib`` or ``api``, the
    messenger makes 1.4.0's calls on it (``lib.Twitter(auth=lib.OAuth(...))`` when warming up,
    ``api.statuses.update(status=...)`` to post) instead of requests to X API v2.
    """

    alias = 'twitter'
    title = gettext_lazy('Tweet')
    address_attr = 'twitter'
    api_url = 'https://api.x.com'
    extra_name = 'twitter'
    api = None  # 1.4.0's client of the ``twitter`` package; see before_send()
    _session_started = False

    def __init__(
        self,
        api_key: str,
        api_secret: str,
        access_token: str,
        access_token_secret: str,
        *,
        api_url: Optional[str] = None,
        proxy: TypeProxy = None,
        timeout: Optional[float] = None,
        verify_credentials: bool = False,
        max_length: Optional[int] = MAX_LENGTH,
    ):
        stand_in = stand_in_module('twitter')
        if stand_in is None:
            super().__init__(proxy, api_url=api_url, timeout=timeout)
            oauth = import_optional('requests_oauthlib', extra=self.extra_name)
        else:  # a 1.4.0 suite's `twitter` stand-in: neither requests nor requests-oauthlib is needed
            self.lib, self.proxy, oauth = stand_in, proxy, None
            if api_url is not None:
                self.api_url = api_url
            if timeout is not None:
                self.timeout = timeout
        self._requests = None if stand_in is not None else self.lib
        self.api_key = api_key
        self.api_secret = api_secret
        self.access_token = access_token
        self.access_token_secret = access_token_secret
        self.api_url = self.api_url.rstrip('/')
        self.verify_credentials = verify_credentials
        self.max_length = max_length
        # HMAC-SHA1 in the Authorization header; a JSON body is left out of the signature.
        self.auth = (
            None
            if oauth is None
            else oauth.OAuth1(
                api_key,
                client_secret=api_secret,
                resource_owner_key=access_token,
                resource_owner_secret=access_token_secret,
            )
        )

    def get_secrets(self):
        return self.api_key, self.api_secret, self.access_token, self.access_token_secret

    def request(self, method: str, url: str, **kwargs) -> Any:
        """Make a signed request; 1.4.0's ``get()``/``post()`` come through here too."""
        kwargs.setdefault('auth', self.auth)
        return super().request(method, url, **kwargs)

    # Warm-up ----------------------------------------------------------------------------------

    def before_send(self) -> None:
        """Open the session; with ``verify_credentials``, ask X whether it accepts the credentials."""
        if self.lib is not self.__dict__.get('_requests'):
            self._legacy_before_send()
            return
        self.api = None  # a client assigned by the project gives way, as in 1.4.0
        super().before_send()

    def after_send(self) -> None:
        if self.lib is self.__dict__.get('_requests'):  # the legacy stand-in has no session to close
            super().after_send()

    def warm_up(self) -> None:
        missing = [
            name for name in ('api_key', 'api_secret', 'access_token', 'access_token_secret') if not getattr(self, name)
        ]
        if missing:
            raise MessengerWarmupException(f'{self.title}: credentials missing: {", ".join(missing)}')
        if self.verify_credentials:
            self.request('GET', f'{self.api_url}/2/users/me')

    def _legacy_before_send(self) -> None:
        """1.4.0's warm-up, on the ``twitter`` stand-in in ``lib``: builds ``api``."""
        lib = self.lib
        try:
            self.api = lib.Twitter(
                auth=lib.OAuth(self.access_token, self.access_token_secret, self.api_key, self.api_secret)
            )
        except lib.api.TwitterError as error:
            raise MessengerWarmupException(f'Twitter Error: {error}') from error
        self._session_started = True

    # Responses --------------------------------------------------------------------------------

    def check_response(self, response, payload: Any) -> None:
        """Map X API v2 statuses; the service's own ``title``/``detail``/``errors`` go in the text."""
        status = response.status_code
        if status < 400:
            if isinstance(payload, dict) and payload.get('errors') and 'data' not in payload:
                raise PermanentDeliveryError(f'{self.title}: HTTP {status}: {self.describe_error(response, payload)}')
            return
        if status in (401, 429):
            wait = rate_limit_wait(response.headers) if status == 429 else None
            cls = AccountRateLimited if status == 429 else AccountWideError
            raise cls(f'{self.title}: HTTP {status}: {self.describe_error(response, payload)}', retry_after=wait)
        super().check_response(response, payload)

    def describe_error(self, response, payload: Any) -> str:
        if isinstance(payload, dict):
            parts = []
            title, detail = payload.get('title'), payload.get('detail')
            if title or detail:
                parts.append(': '.join(str(part) for part in dict.fromkeys((title, detail)) if part))
            for item in payload.get('errors') or ():
                if isinstance(item, dict) and (item.get('message') or item.get('detail')):
                    text = str(item.get('message') or item.get('detail'))
                    parts.append(f'{text} (code {item["code"]})' if item.get('code') is not None else text)
            if parts:
                return '; '.join(parts)[:500]
        return super().describe_error(response, payload)

    # Sending ----------------------------------------------------------------------------------

    @classmethod
    def _build_message(cls, to: Optional[str], text: str) -> str:
        """Return the tweet: ``'@to text'`` for an address, ``text`` alone without one."""
        to = (to or '').strip()
        if not to:
            return text
        return f'{to if to.startswith("@") else "@" + to} {text}'

    def _send_message(self, msg: str, to: Optional[str] = None) -> Any:
        """Post ``msg``; return X's ``data`` (``id`` and ``text`` of the new post)."""
        if self.api is not None:  # 1.4.0's client (a test's stand-in), see before_send()
            return self.api.statuses.update(status=msg)
        if self.max_length is not None:
            length = tweet_length(msg)
            if length > self.max_length:
                raise PermanentDeliveryError(
                    f'{self.title}: the post is {length} characters long as X counts them '
                    f'(URLs count {URL_LENGTH}); the limit is {self.max_length}.'
                )
        payload = self.request('POST', f'{self.api_url}/2/tweets', json={'text': msg})
        return payload.get('data', payload) if isinstance(payload, dict) else payload

    def dispatch_problem(self, dispatch) -> str:
        if not dispatch.address and dispatch.recipient_id:
            # Posting it untargeted would publish a message meant for one person.
            return f'{self.title}: the recipient user has no `{self.address_attr}` handle.'
        return ''


def rate_limit_wait(headers) -> Optional[float]:
    """Return seconds until X lifts the limit a 429 reports, from its reset headers.

    ``x-rate-limit-reset`` (the endpoint's window) and ``x-user-limit-24hour-reset`` /
    ``x-app-limit-24hour-reset`` (daily caps) are epoch seconds; a limit counts when its
    ``-remaining`` header is 0 or absent. ``Retry-After`` is honoured too; the longest wait wins.
    """
    now = time.time()
    waits = []
    retry_after = parse_retry_after(headers.get('Retry-After'))
    if retry_after is not None:
        waits.append(retry_after)
    resets = {}
    for prefix in ('x-rate-limit', 'x-user-limit-24hour', 'x-app-limit-24hour'):
        try:
            resets[prefix] = max(float(headers[f'{prefix}-reset']) - now, 0.0)
        except (KeyError, TypeError, ValueError):
            continue
        if headers.get(f'{prefix}-remaining') in (None, '0'):
            waits.append(resets[prefix])
    if not waits and 'x-rate-limit' in resets:
        waits.append(resets['x-rate-limit'])
    return max(waits) if waits else None
