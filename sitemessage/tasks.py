"""Send tasks for task systems: Celery (``sitemessage.send_scheduled``) and ``django.tasks``.

Celery discovers this module in installed apps (``app.autodiscover_tasks()``); with
``SITEMESSAGE_ENQUEUE_ON_SCHEDULE = 'celery'`` every scheduling enqueues a send after commit.
"""
from __future__ import annotations

from typing import Optional

from .exceptions import SiteMessageConfigurationError


def send_scheduled(priority: Optional[int] = None) -> dict:
    """Run one delivery pass; return its report as a dict (serialisable task result)."""
    from .sending import send_scheduled_messages
    report = send_scheduled_messages(priority=priority)
    return {'sent': report.sent, 'errors': report.errors, 'failed': report.failed,
            'seconds': round(report.seconds, 3)}


try:  # Celery is optional: pip install "django-sitemessage[celery]"
    from celery import shared_task
except ImportError:  # pragma: no cover - exercised where celery is missing
    celery_send_scheduled = None
else:
    celery_send_scheduled = shared_task(name='sitemessage.send_scheduled', ignore_result=False)(send_scheduled)

try:  # django.tasks exists from Django 6.0 on
    from django.tasks import task as _django_task
except ImportError:
    django_send_scheduled = None
else:  # pragma: no cover - needs Django 6
    django_send_scheduled = _django_task()(send_scheduled)


def check_target(target: str) -> None:
    """Raise :class:`SiteMessageConfigurationError` unless ``target`` can be enqueued on here."""
    if target == 'celery':
        if celery_send_scheduled is None:
            raise SiteMessageConfigurationError(
                'SITEMESSAGE_ENQUEUE_ON_SCHEDULE is "celery" but Celery is not installed: '
                'pip install "django-sitemessage[celery]"')
    elif target == 'django_tasks':
        if django_send_scheduled is None:
            raise SiteMessageConfigurationError(
                'SITEMESSAGE_ENQUEUE_ON_SCHEDULE is "django_tasks" but this Django has no django.tasks (Django 6.0+).')
    else:
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_ENQUEUE_ON_SCHEDULE must be "celery", "django_tasks" or None, got {target!r}.')


def enqueue_send(target: str, priority: Optional[int] = None) -> None:
    """Enqueue a send pass on ``'celery'`` or ``'django_tasks'``; a broker error reaches the caller."""
    check_target(target)
    if target == 'celery':
        celery_send_scheduled.delay(priority)
    else:
        django_send_scheduled.enqueue(priority)
