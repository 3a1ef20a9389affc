"""VKontakte: wall posts to user and community walls through the VK API.

API references: https://dev.vk.com/en/method/wall.post (the method),
https://dev.vk.com/en/api/api-requests (request format, versions) and
https://dev.vk.com/en/reference/errors (error codes).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional

from django.utils.translation import gettext_lazy as _

from ..exceptions import MessengerException, PermanentDeliveryError, TemporaryDeliveryError
from ..settings import get_setting
from .base_http import RateLimited, RequestsMessengerBase, TypeProxy

# VK API error codes (see the error reference linked above).
TOKEN_CODES = {5, 28}  # user / application authorization failed: the token is invalid, expired or revoked
TEMPORARY_CODES = {1, 6, 9, 10, 14, 29}  # unknown, too many requests/s, flood control, internal, captcha, quota
RATE_LIMIT_CODES = {6, 9, 29}  # too many requests per second, flood control, method quota: every worker waits
RETRY_AFTER = {6: 1.0}  # "too many requests per second" clears within a second

_LINK = re.compile(r'https?://\S+$')


class VKontakteMessengerException(MessengerException):
    """An error the VK API reported; ``code`` is VK's ``error_code``."""

    code: Optional[int] = None


class VKontakteTemporaryError(VKontakteMessengerException, TemporaryDeliveryError):
    """A VK API error worth retrying later (rate limits, flood control, internal errors, a bad token)."""


class VKontakteRateLimited(VKontakteTemporaryError, RateLimited):
    """A VK API rate limit (codes 6, 9, 29): every worker posting with the token waits."""


class VKontaktePermanentError(VKontakteMessengerException, PermanentDeliveryError):
    """A VK API error that retrying the same post cannot fix (access denied, invalid owner)."""


class VKontakteMessenger(RequestsMessengerBase):
    """Post messages and links to VKontakte walls with ``wall.post``.

    The dispatch address is the wall owner id: ``'12345'`` for a user, ``'-12345'`` (with the minus)
    for a community. Posts go to ``POST https://api.vk.com/method/wall.post`` form-encoded with
    ``owner_id``, ``message`` (or ``attachments`` when the text is a single URL), ``v`` and the
    token as the ``access_token`` form field (never in a URL, never in error texts).
    ``from_group=1`` (post on behalf of the community) is sent for community walls; pass
    ``from_group=True`` or ``False`` to force it either way.

    The API version comes from ``api_version`` or ``SITEMESSAGE_VKONTAKTE_API_VERSION``.

    Getting a token today: a *community* access token is the server-side option. In the
    community's Manage -> API usage -> Access tokens, create a key with the "wall" (and, for
    photos, "photos") right and post to ``'-<community id>'``. User tokens from the Implicit Flow
    (:meth:`get_access_token`) are meant for client-side use; VK ID (https://id.vk.com) hosts
    the current OAuth documentation for user tokens.

    The token is verified with ``users.get`` on every warm-up: a token VK rejects (error 5) fails
    the warm-up, so the batch is retried later instead of being lost. Error 5 on a post (the
    token was revoked mid-batch) is retried too: the fix is a new token in the configuration.
    """

    alias = 'vk'
    title = _('VKontakte')
    address_attr = 'vkontakte'
    api_url = 'https://api.vk.com'
    extra_name = 'vkontakte'

    def __init__(
        self,
        access_token: str,
        proxy: TypeProxy = None,
        *,
        api_version: Optional[str] = None,
        from_group: Optional[bool] = None,
        api_url: Optional[str] = None,
        timeout: Optional[float] = None,
    ):
        super().__init__(proxy, api_url=api_url, timeout=timeout)
        self.access_token = access_token
        self.from_group = from_group
        self._api_version_arg = api_version

    @property
    def api_version(self) -> str:
        """The VK API version in use, such as ``5.199``: the constructor's, else the setting's."""
        return str(
            get_setting(
                'VKONTAKTE_API_VERSION',
                value=self._api_version_arg,
                check='text',
                argument='VKontakteMessenger(api_version=...)',
            )
        )

    def get_secrets(self) -> Iterable[str]:
        return (self.access_token,)

    # Protocol ---------------------------------------------------------------------------------

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """Call an API ``method`` with form-encoded ``params``; return the ``response`` member."""
        data = {**(params or {}), 'access_token': self.access_token, 'v': self.api_version}
        payload = self.request('POST', f'{self.api_url.rstrip("/")}/method/{method}', data=data)
        return payload.get('response') if isinstance(payload, dict) else payload

    def payload_error(self, response, payload: Any) -> Optional[dict]:
        """VK errors come as ``{"error": {"error_code", "error_msg", "request_params"}}``, with HTTP 200."""
        error = payload.get('error') if isinstance(payload, dict) else None
        return error if error is None or isinstance(error, dict) else {'error_msg': str(error)}

    def map_payload_error(self, response, error: Dict[str, Any]) -> VKontakteMessengerException:
        # request_params is left out: VK echoes the call's parameters there, the token among them.
        code = _int(error.get('error_code'))
        description = f'error {code}: {error.get("error_msg") or "unknown error"}'
        exception: VKontakteMessengerException
        if code in TOKEN_CODES:
            exception = VKontakteTemporaryError(f'VKontakte access token invalid or expired: {description}')
        elif code in TEMPORARY_CODES:
            cls = VKontakteRateLimited if code in RATE_LIMIT_CODES else VKontakteTemporaryError
            exception = cls(f'{self.title}: {description}', retry_after=RETRY_AFTER.get(code))
        else:
            exception = VKontaktePermanentError(f'{self.title}: {description}')
        exception.code = code
        return exception

    def warm_up(self) -> None:
        """Verify the token with ``users.get``: a rejected token or an unreachable API fails the warm-up."""
        try:
            self.call('users.get')
        except VKontakteMessengerException as error:
            # Any other API error (say, a method unavailable with community auth) means VK accepted the token.
            if error.code in TOKEN_CODES:
                raise

    def _owner_id(self, to: Any) -> Optional[int]:
        to = str(to if to is not None else '').strip()
        if not to:
            return None  # 1.4.0 behaviour: the token owner's own wall
        try:
            return int(to)
        except ValueError:
            raise VKontaktePermanentError(
                f'VKontakte: a wall owner id is a number such as 12345, or -12345 for a community; got {to!r}'
            ) from None

    def _send_message(self, msg: Any, to: Optional[str] = None) -> Any:
        text = str(msg)
        owner_id = self._owner_id(to)
        params: Dict[str, Any] = {'owner_id': owner_id} if owner_id is not None else {}
        params['attachments' if _LINK.match(text) else 'message'] = text
        from_group = self.from_group if self.from_group is not None else (owner_id or 0) < 0
        if from_group:
            params['from_group'] = 1
        result = self.call('wall.post', params)
        return result.get('post_id') if isinstance(result, dict) else result

    # Helpers ----------------------------------------------------------------------------------

    @classmethod
    def get_access_token(cls, *, app_id: str) -> str:
        """Open (and return) the Implicit Flow authorization URL asking for ``wall,offline`` rights.

        VK says tokens obtained this way are for client-side use: prefer a community token (see
        the class docstring) or VK ID's server-side flows for a site's messenger.
        """
        import webbrowser

        url = (
            f'https://oauth.vk.com/authorize?client_id={app_id}&scope=wall,offline&display=page'
            f'&response_type=token&v={get_setting("VKONTAKTE_API_VERSION", check="text")}'
            f'&redirect_uri=https://oauth.vk.com/blank.html'
        )
        webbrowser.open(url)
        return url


def _int(value: Any) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
