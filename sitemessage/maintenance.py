"""Housekeeping: removing sent dispatches, alerting about undelivered ones."""

from __future__ import annotations

from datetime import timedelta
from typing import List, Optional, Union

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from .delivery.run import SendReport, deliver_batch
from .messages.attachments import CONTEXT_KEY as ATTACHMENTS_KEY
from .messages.attachments import delete_owned_attachments
from .messages.email import EmailTextMessage
from .models import INBOX_ALIAS, Dispatch, IdempotencyKey, Message
from .recipients import recipients
from .registry import get_registered_message_types, register_message_types
from .scheduling import schedule_messages
from .settings import get_positive_int_setting, get_setting
from .site import get_site_url

ALERT_PRIORITY = 999


def cleanup_sent_messages(ago: Optional[int] = None, dispatches_only: bool = False) -> int:
    """Delete sent dispatches (older than ``ago`` days when given) and, unless ``dispatches_only``,
    messages left without dispatches by that. Works in batches; returns the dispatches deleted.

    In-app inbox items (messenger ``inbox``) are the users' feeds: they are kept until archived.
    """
    if ago is not None and not isinstance(ago, int):
        try:
            ago = int(ago)
        except (TypeError, ValueError):
            raise ValueError(f'`ago` must be a number of days, got {ago!r}.') from None
    batch_size = get_positive_int_setting('CLEANUP_BATCH_SIZE')
    sent = Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).exclude(
        messenger=INBOX_ALIAS, time_archived__isnull=True
    )
    if ago:
        sent = sent.filter(time_dispatched__lte=timezone.now() - timedelta(days=ago))
    deleted = 0
    while True:
        rows = list(sent.order_by('pk').values_list('pk', 'message_id')[:batch_size])
        if not rows:
            break
        Dispatch.objects.filter(pk__in=[pk for pk, _message_id in rows]).delete()
        deleted += len(rows)
        if not dispatches_only:
            message_ids = {message_id for _pk, message_id in rows}
            gone = Message.objects.filter(pk__in=message_ids, dispatch__isnull=True)
            with_files = list(gone.filter(context__contains=ATTACHMENTS_KEY).values_list('context', flat=True))
            gone.delete()
            delete_owned_attachments(with_files)
    return deleted


def cleanup_idempotency_keys() -> int:
    """Delete the idempotency keys older than ``SITEMESSAGE_IDEMPOTENCY_RETENTION``; return how many.

    A scheduling with an expired key replaces it anyway: this only keeps the table small.
    """
    deleted, _per_model = IdempotencyKey.objects.expired(get_setting('IDEMPOTENCY_RETENTION', check='seconds')).delete()
    return deleted


def check_undelivered(to: Union[str, List[str], None] = None) -> int:
    """Count failed dispatches; if any, e-mail ``to`` (default: ``ADMINS``) about them. Return the count.

    Only the alert itself is sent right away, so the alert never waits behind the queue it reports on.
    """
    failed_count = Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED).count()
    if failed_count:
        if to is None:
            admins = getattr(settings, 'ADMINS', None)
            if admins:
                to = [admin[1] for admin in admins]
        if to:
            if 'email_plain' not in get_registered_message_types():
                register_message_types(EmailTextMessage)
            text = _('You have %(count)s undelivered dispatch(es) at %(url)s') % {
                'count': failed_count,
                'url': get_site_url(),
            }
            alert = EmailTextMessage(_('[SITEMESSAGE] Undelivered dispatches'), text)
            ((message, _dispatches),) = schedule_messages(
                alert, recipients(get_setting('SHORTCUT_EMAIL_MESSENGER_TYPE'), to), priority=ALERT_PRIORITY
            )
            batch = Dispatch.objects.filter(message=message).claim(
                get_positive_int_setting('SEND_BATCH_SIZE'), get_positive_int_setting('SEND_LEASE_SECONDS')
            )
            error = deliver_batch(batch, SendReport(), False, False)
            if error is not None:
                raise error
    return failed_count
