"""Facebook: publish posts to a Page feed through the Graph API.

API references: https://developers.facebook.com/docs/graph-api/reference/page/feed/ (publishing),
https://developers.facebook.com/docs/pages-api/posts/ (Pages API guide) and
https://developers.facebook.com/docs/graph-api/guides/error-handling/ (error codes).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterable, Optional

from django.utils.translation import gettext_lazy as _

from ..exceptions import MessengerException, PermanentDeliveryError, TemporaryDeliveryError
from ..settings import get_setting
from .base_http import RateLimited, RequestsMessengerBase, TypeProxy, parse_retry_after, protect_secrets_in_logs

# Graph API error codes (see the error-handling guide linked above).
TOKEN_CODES = {102, 190}  # API session / access token expired, revoked or invalid
THROTTLE_CODES = {4, 17, 32, 341, 613, 80001}  # app, user, page and custom rate limits
TRANSIENT_CODES = {1, 2}  # unknown error, service temporarily unavailable
PERMISSION_CODES = {10, 100}  # + the 200-299 range: permission missing, invalid parameter

_LINK = re.compile(r'https?://\S+$')


class FacebookMessengerException(MessengerException):
    """An error the Graph API reported; ``code`` and ``subcode`` are Facebook's own numbers."""

    code: Optional[int] = None
    subcode: Optional[int] = None


class FacebookTemporaryError(FacebookMessengerException, TemporaryDeliveryError):
    """A Graph API error worth retrying later (rate limits, outages, an expired page token)."""


class FacebookRateLimited(FacebookTemporaryError, RateLimited):
    """A Graph API rate limit (a throttling code, HTTP 429): every worker posting to the page waits."""


class FacebookPermanentError(FacebookMessengerException, PermanentDeliveryError):
    """A Graph API error that retrying the same post cannot fix (missing permission, bad parameter)."""


class FacebookMessenger(RequestsMessengerBase):
    """Publish messages and links to a Facebook Page feed with a Page access token.

    Posts go to ``POST https://graph.facebook.com/<version>/<page_id>/feed``: a text that is a single
    URL is sent as ``link``, any other text as ``message``. The page token travels as the
    ``access_token`` form field (query parameter for GET requests), never in error texts. The
    recipient address is always ``''``: every post goes to the one page.

    The Graph API version comes from ``graph_version`` or ``SITEMESSAGE_FACEBOOK_GRAPH_VERSION``.

    Getting a Page access token today:

    1. Create an app at https://developers.facebook.com/apps (type "Business") and add the Pages
       use case; note its App ID and App Secret.
    2. In the Graph API Explorer, select the app and get a *User* access token with the
       ``pages_show_list``, ``pages_read_engagement`` and ``pages_manage_posts`` permissions, as a
       person who can create content on the page.
    3. Exchange it for page tokens: ``FacebookMessenger('').get_page_access_token(app_id,
       app_secret, user_token)`` returns ``{page name: page token}``. Page tokens obtained from
       a long-lived user token do not expire, until the password changes or the app is removed.
    4. Register ``FacebookMessenger('<page token>')``.

    The page token is verified with ``GET /<version>/me`` on every warm-up: an expired or revoked
    token fails the warm-up, so the batch is retried later instead of being lost. A token that
    expires mid-batch (code 190) is also retried: the fix is a new token in the configuration,
    after which the same dispatches can still be delivered.
    """

    alias = 'fb'
    title = _('Facebook')
    address_attr = None
    api_url = 'https://graph.facebook.com'
    extra_name = 'facebook'

    def __init__(
        self,
        page_access_token: str,
        proxy: TypeProxy = None,
        *,
        page_id: str = 'me',
        graph_version: Optional[str] = None,
        api_url: Optional[str] = None,
        timeout: Optional[float] = None,
    ):
        super().__init__(proxy, api_url=api_url, timeout=timeout)
        self.access_token = page_access_token
        self.page_id = page_id
        self._graph_version_arg = graph_version

    @property
    def graph_version(self) -> str:
        """The Graph API version in use, such as ``v24.0``: the constructor's, else the setting's."""
        version = str(
            get_setting(
                'FACEBOOK_GRAPH_VERSION',
                value=self._graph_version_arg,
                check='text',
                argument='FacebookMessenger(graph_version=...)',
            )
        )
        return version if version.startswith('v') else f'v{version}'

    def get_secrets(self) -> Iterable[str]:
        return (self.access_token,)

    def _url(self, path: str) -> str:
        return f'{self.api_url.rstrip("/")}/{self.graph_version}/{path}'

    # Protocol ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Verify the page token, so an expired one fails the warm-up and the batch is retried."""
        self.request('GET', self._url('me'), params={'fields': 'id,name', 'access_token': self.access_token})

    def _send_message(self, msg: Any, to: Optional[str] = None) -> Any:
        text = str(msg)
        field = 'link' if _LINK.match(text) else 'message'
        result = self.request(
            'POST', self._url(f'{self.page_id}/feed'), data={field: text, 'access_token': self.access_token}
        )
        return result.get('id') if isinstance(result, dict) else result

    def payload_error(self, response, payload: Any) -> Optional[dict]:
        """Graph API errors come as ``{"error": {"code", "message", ...}}``."""
        error = payload.get('error') if isinstance(payload, dict) else None
        return error if error is None or isinstance(error, dict) else {'message': str(error)}

    def map_payload_error(self, response, error: Dict[str, Any]) -> FacebookMessengerException:
        code, subcode = _int(error.get('code')), _int(error.get('error_subcode'))
        details = ', '.join(
            f'{label} {error[key]}'
            for key, label in (
                ('code', 'code'),
                ('error_subcode', 'subcode'),
                ('type', 'type'),
                ('fbtrace_id', 'fbtrace_id'),
            )
            if error.get(key) not in (None, '')
        )
        description = f'{error.get("message") or "unknown error"}' + (f' [{details}]' if details else '')
        status = response.status_code
        text = f'{self.title}: HTTP {status}: {description}'
        exception: FacebookMessengerException
        if code in TOKEN_CODES:
            exception = FacebookTemporaryError(f'Facebook page access token expired or invalid: {description}')
        elif code in THROTTLE_CODES or code in TRANSIENT_CODES:
            retry_after = parse_retry_after(response.headers.get('Retry-After')) or usage_retry_after(response.headers)
            cls = FacebookRateLimited if code in THROTTLE_CODES else FacebookTemporaryError
            exception = cls(text, retry_after=retry_after)
        elif code in PERMISSION_CODES or (code is not None and 200 <= code < 300):
            exception = FacebookPermanentError(text)
        elif status in (408, 429) or status >= 500 or error.get('is_transient'):
            cls = FacebookRateLimited if status == 429 else FacebookTemporaryError
            exception = cls(text, retry_after=parse_retry_after(response.headers.get('Retry-After')))
        else:
            exception = FacebookPermanentError(text)
        exception.code, exception.subcode = code, subcode
        return exception

    # Helpers ----------------------------------------------------------------------------------

    def get_page_access_token(self, app_id: str, app_secret: str, user_token: str) -> Dict[str, str]:
        """Exchange a user token for a long-lived one; return ``{page name: page access token}``.

        Makes ``GET /<version>/oauth/access_token`` (``grant_type=fb_exchange_token``), then
        ``GET /<version>/me/accounts`` (following ``paging.next``) with the long-lived token.
        Errors raise :class:`FacebookMessengerException` with every secret redacted; the app
        secret and the tokens never reach urllib3's DEBUG log (the URLs carry them).
        """
        secrets = [*self.get_secrets(), app_secret, user_token]
        protect_secrets_in_logs(secrets)
        # The app secret and the tokens ride in URLs: no error may leave with one of them.
        with self.scrubbed_errors(secrets):
            try:
                return self._page_tokens(app_id, app_secret, user_token, secrets)
            except FacebookMessengerException:
                raise
            except MessengerException as error:
                raise FacebookMessengerException(str(error)) from None

    def _page_tokens(self, app_id: str, app_secret: str, user_token: str, secrets: list) -> Dict[str, str]:
        exchanged = self.request(
            'GET',
            self._url('oauth/access_token'),
            params={
                'grant_type': 'fb_exchange_token',
                'client_id': app_id,
                'client_secret': app_secret,
                'fb_exchange_token': user_token,
            },
        )
        long_lived = exchanged.get('access_token') if isinstance(exchanged, dict) else None
        if not long_lived:
            raise FacebookMessengerException('Facebook: the token exchange returned no access_token')
        secrets.append(long_lived)
        protect_secrets_in_logs([long_lived])
        tokens = {}
        url: Optional[str] = self._url('me/accounts')
        params: Optional[Dict[str, Any]] = {'access_token': long_lived}
        for _page in range(100):  # bounded: 100 pages of 25 accounts each
            accounts = self.request('GET', url, params=params) if url else {}
            accounts = accounts if isinstance(accounts, dict) else {}
            for page in accounts.get('data') or []:
                if page.get('access_token'):
                    tokens[page.get('name')] = page['access_token']
                    protect_secrets_in_logs([page['access_token']])
            url = (accounts.get('paging') or {}).get('next')
            if not url:
                break
            params = None  # the next link carries its own parameters
        return tokens


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def usage_retry_after(headers) -> Optional[float]:
    """Seconds until access is regained, from the ``X-*-Usage`` headers' ``estimated_time_to_regain_access``.

    ``X-Business-Use-Case-Usage`` holds ``{business id: [{..., "estimated_time_to_regain_access": minutes}]}``;
    ``X-App-Usage`` and ``X-Page-Usage`` may hold the same key at the top level.
    """
    minutes = []
    for name in ('X-Business-Use-Case-Usage', 'X-Page-Usage', 'X-App-Usage'):
        try:
            stack = [json.loads(headers.get(name) or 'null')]
        except ValueError:
            continue
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                value = item.get('estimated_time_to_regain_access')
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                    minutes.append(value)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return max(minutes) * 60.0 if minutes else None
