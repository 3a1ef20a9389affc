"""The in-app inbox: a message "delivered" to a user is kept for their feed on the site.

Delivery is storage: the engine writes each dispatch's compiled text (``message_cache``) and its
Sent status in bulk, as for every messenger, and the user's feed is their sent ``inbox``
dispatches (:meth:`~sitemessage.models.DispatchQuerySet.inbox`). So the messenger itself never
touches the database: it only checks that each dispatch names a user and marks it sent.
Reading an item in the feed sets the dispatch's read status. See ``docs/inbox.rst``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Type

from django.utils.translation import gettext_lazy as _

from ..exceptions import MessengerException
from ..models import INBOX_ALIAS
from .base import MessengerBase

if TYPE_CHECKING:  # pragma: nocover
    from ..messages.base import MessageBase
    from ..models import Dispatch, Message


class InboxMessenger(MessengerBase):
    """Keeps messages in the recipients' in-app inbox (users only; no external service)."""

    alias = INBOX_ALIAS
    title = _('Site inbox')

    @classmethod
    def get_address(cls, recipient: Any) -> Any:
        """A user's address is their primary key (the feed is found by the dispatch's recipient)."""
        pk = getattr(recipient, 'pk', None)
        return str(pk) if pk is not None and hasattr(recipient, 'get_username') else recipient

    def send(
        self, message_cls: Type['MessageBase'], message_model: 'Message', dispatch_models: List['Dispatch']
    ) -> None:
        """Mark each dispatch with a user recipient sent (its text becomes the feed item); fail the others."""
        for dispatch in dispatch_models:
            if dispatch.recipient_id is None:
                self.mark_failed(
                    dispatch,
                    f'The inbox delivers to users only: {dispatch.address!r} is an address without a user.',
                )
            else:
                self.mark_sent(dispatch)

    def _test_message(self, to: Optional[str], text: str) -> Any:
        raise MessengerException('The inbox cannot be probed: schedule a message to a user and open their feed.')
