"""Delivery reports of e-mail service providers, through django-anymail's ``tracking`` signal.

Anymail turns each ESP's webhook into :class:`anymail.signals.AnymailTrackingEvent` objects; this
module finds the dispatch by the event's ``message_id`` (the ``provider_message_id`` that
:class:`~sitemessage.messengers.anymail.AnymailMessenger` stored when sending), records the
news as ``provider_status``, and suppresses the address on a bounce, complaint or unsubscription.
Connected in ``AppConfig.ready()`` when django-anymail is installed. See docs/provider-status.rst.

Bad input never changes a dispatch it does not match and never costs a 5xx: an event with no or
an unknown message id (another project's mail on the same ESP account) is logged and ignored; a
replayed or late event cannot move a status back (statuses are ranked); a body the webhook view
cannot parse is refused with 400 when the view is wrapped by :func:`refuse_unparsable`
(:func:`anymail_urlpatterns` does that for every anymail webhook).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, List, Optional

from django.db.models import Q
from django.http import HttpResponse, HttpResponseBadRequest
from django.utils import timezone

from .models import Dispatch, Suppression

LOGGER = logging.getLogger(__name__)

#: anymail event type -> the dispatch's provider status; other types (queued, deferred...) change nothing.
STATUS_BY_EVENT = {
    'delivered': Dispatch.PROVIDER_STATUS_DELIVERED,
    'opened': Dispatch.PROVIDER_STATUS_OPENED,
    'clicked': Dispatch.PROVIDER_STATUS_CLICKED,
    'unsubscribed': Dispatch.PROVIDER_STATUS_UNSUBSCRIBED,
    'bounced': Dispatch.PROVIDER_STATUS_BOUNCED,
    'rejected': Dispatch.PROVIDER_STATUS_BOUNCED,
    'complained': Dispatch.PROVIDER_STATUS_COMPLAINED,
}

#: provider status -> why the address is suppressed.
SUPPRESS_ON = {
    Dispatch.PROVIDER_STATUS_BOUNCED: Suppression.REASON_BOUNCE,
    Dispatch.PROVIDER_STATUS_COMPLAINED: Suppression.REASON_COMPLAINT,
    Dispatch.PROVIDER_STATUS_UNSUBSCRIBED: Suppression.REASON_UNSUBSCRIBE,
}

# A rejection for these reasons is the address' fault (not the content's): it is suppressed.
_ADDRESS_REJECTIONS = {'invalid', 'bounced', None}


def _safe(value: Any, limit: int = 200) -> str:
    """Untrusted text for a log line: one line, bounded, shown as a repr."""
    return repr(str(value)[:limit])


def record_event(event: Any, esp_name: str = '') -> Optional[Dispatch]:
    """Apply one anymail tracking event to its dispatch; return the dispatch, or None when ignored (logged why).

    The status is written with one guarded UPDATE (only a status of a lower rank is replaced), so
    a replayed event or one arriving after a later one changes nothing.
    """
    status = STATUS_BY_EVENT.get(str(getattr(event, 'event_type', '')))
    message_id = getattr(event, 'message_id', None)
    if status is None:
        LOGGER.debug('%s tracking event %s ignored: not a delivery status', esp_name, _safe(event.event_type))
        return None
    if not message_id or not isinstance(message_id, str):
        LOGGER.info('%s %s event ignored: it has no message id', esp_name, event.event_type)
        return None
    candidates = list(
        Dispatch.objects.filter(provider_message_id=message_id, dispatch_status=Dispatch.DISPATCH_STATUS_SENT)
    )
    recipient = getattr(event, 'recipient', None)
    if len(candidates) > 1 and isinstance(recipient, str) and recipient:
        candidates = [d for d in candidates if recipient.lower() in d.address.lower()]
    if len(candidates) != 1:
        LOGGER.info(
            '%s %s event for message id %s ignored: %s',
            esp_name,
            event.event_type,
            _safe(message_id),
            'no dispatch has it (another project, or deleted)' if not candidates else 'several dispatches match',
        )
        return None
    dispatch = candidates[0]
    when = getattr(event, 'timestamp', None) or timezone.now()
    updated = Dispatch.objects.filter(
        Q(provider_status__isnull=True) | Q(provider_status__lt=status), pk=dispatch.pk
    ).update(provider_status=status, provider_status_time=when)
    if not updated:
        LOGGER.info(
            '%s %s event for dispatch %s ignored: replayed, or older than its status',
            esp_name,
            event.event_type,
            dispatch.pk,
        )
        return None
    dispatch.provider_status, dispatch.provider_status_time = status, when
    reason = SUPPRESS_ON.get(status)
    if reason is not None and (
        event.event_type != 'rejected' or getattr(event, 'reject_reason', None) in _ADDRESS_REJECTIONS
    ):
        details = getattr(event, 'description', None) or getattr(event, 'mta_response', None) or ''
        note = f'{esp_name} {event.event_type}: {details}'.strip()
        Suppression.objects.suppress([(dispatch.messenger, dispatch.address)], reason, note=note)
    return dispatch


def handle_tracking(sender: Any, event: Any, esp_name: str = '', **kwargs: Any) -> None:
    """Receiver of anymail's ``tracking`` signal (connected by :func:`connect`)."""
    record_event(event, esp_name)


def connect() -> bool:
    """Connect :func:`handle_tracking` to anymail's ``tracking`` signal; False when anymail is not installed."""
    try:
        from anymail.signals import tracking
    except ImportError:
        return False
    tracking.connect(handle_tracking, dispatch_uid='sitemessage.tracking')
    return True


def refuse_unparsable(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a webhook view: a body it cannot parse gets 400 with a logged reason, not a 500.

    Anymail's views parse the ESP's JSON (or form data) themselves and let a parse error raise.
    """

    @functools.wraps(view)
    def guarded(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            # ValueError covers json.JSONDecodeError and UnicodeDecodeError; the others, a JSON of the wrong shape.
            LOGGER.warning(
                'Webhook %s refused: its body cannot be parsed (%s)',
                _safe(request.path),
                type(error).__name__,
                exc_info=True,
            )
            return HttpResponseBadRequest('The webhook body cannot be parsed.')

    return guarded


def anymail_urlpatterns() -> List[Any]:
    """Anymail's webhook URLs (``anymail.urls``), each view wrapped by :func:`refuse_unparsable`.

    Include them where you would include ``anymail.urls``::

        path('anymail/', include((anymail_urlpatterns(), 'anymail'))),
    """
    from anymail.urls import urlpatterns
    from django.urls import URLPattern

    return [
        URLPattern(pattern.pattern, refuse_unparsable(pattern.callback), pattern.default_args, pattern.name)
        for pattern in urlpatterns
    ]
