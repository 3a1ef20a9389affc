"""Send tasks for task systems: Celery (``sitemessage.send_scheduled``) and ``django.tasks``.

Celery discovers ``sitemessage.tasks`` (which re-exports this module) in installed apps
(``app.autodiscover_tasks()``); with ``SITEMESSAGE_ENQUEUE_ON_SCHEDULE = 'celery'`` every
scheduling enqueues a send after commit.

The ``django.tasks`` task, ``sitemessage.tasks.django_send_scheduled``, is built on first use
(module ``__getattr__``), not at import: importing this module works whatever ``TASKS`` holds
(no ``default`` backend, no ``TASKS`` at all) and on Django before 6.0. Its path names that
attribute, so a backend that stores the path and imports it again in its worker gets the task.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from typing import Any, Optional

from ..delivery.run import send_scheduled_messages
from ..exceptions import SiteMessageConfigurationError

LOGGER = logging.getLogger('sitemessage.tasks')  # the documented logger name

__all__ = [
    'send_scheduled',
    'celery_send_scheduled',
    'has_django_tasks',
    'get_django_task',
    'check_target',
    'enqueue_send',
]  # not django_send_scheduled: star-importing it would build the task


def send_scheduled(priority: Optional[int] = None) -> dict:
    """Run one delivery pass; return its report as a dict (serialisable task result)."""
    report = send_scheduled_messages(priority=priority)
    return {'sent': report.sent, 'errors': report.errors, 'failed': report.failed, 'seconds': round(report.seconds, 3)}


try:  # Celery is optional: pip install "django-sitemessage[celery]"
    from celery import shared_task
except ImportError:  # pragma: no cover - exercised where celery is missing
    celery_send_scheduled = None
else:
    celery_send_scheduled = shared_task(name='sitemessage.send_scheduled', ignore_result=False)(send_scheduled)


# django.tasks ------------------------------------------------------------------------------------


def django_send_scheduled(priority: Optional[int] = None) -> dict:
    """Run one delivery pass (the function of the ``django.tasks`` task of the same name)."""
    return send_scheduled(priority)


# The module attribute `django_send_scheduled` is the Task (built by __getattr__ below); the
# function keeps its name and is placed at the public path, so the task's path,
# `sitemessage.tasks.django_send_scheduled`, stays what backends have stored and leads back to
# the Task when a backend imports it.
django_send_scheduled.__module__ = 'sitemessage.tasks'
_django_send_scheduled_function = django_send_scheduled
del django_send_scheduled

_TASK_LOCK = threading.Lock()
_TASKS: dict = {}  # backend alias -> Task


def has_django_tasks() -> bool:
    """Whether this Django has ``django.tasks`` (Django 6.0+)."""
    return importlib.util.find_spec('django.tasks') is not None


def get_django_task() -> Any:
    """Return the ``django.tasks`` send task (of the ``default`` backend), built on first use.

    Raises ``SiteMessageConfigurationError`` naming the problem where Django has no
    ``django.tasks`` or ``TASKS`` has no such backend.
    """
    if not has_django_tasks():
        raise SiteMessageConfigurationError(
            'SITEMESSAGE_ENQUEUE_ON_SCHEDULE is "django_tasks" but this Django has no django.tasks (Django 6.0+).'
        )
    from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task, task_backends
    from django.tasks.exceptions import InvalidTaskBackend

    alias = DEFAULT_TASK_BACKEND_ALIAS
    with _TASK_LOCK:
        built = _TASKS.get(alias)
        if built is None:
            try:
                task_backends[alias]
            except InvalidTaskBackend as error:
                raise SiteMessageConfigurationError(
                    f'django.tasks: the TASKS setting has no {alias!r} backend ({error}); '
                    f'add one, e.g. TASKS = {{{alias!r}: {{"BACKEND": '
                    f'"django.tasks.backends.immediate.ImmediateBackend"}}}}.'
                ) from error
            built = _TASKS[alias] = task(backend=alias)(_django_send_scheduled_function)
    return built


def __getattr__(name: str) -> Any:
    if name == 'django_send_scheduled':
        # None where Django has no django.tasks, as before the task was built lazily.
        return get_django_task() if has_django_tasks() else None
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def check_target(target: str) -> None:
    """Raise :class:`SiteMessageConfigurationError` for an unknown ``target``, or ``'celery'`` without Celery.

    Called when messages are scheduled, before the transaction commits: such a misconfiguration
    raises before anything is stored, so a caller retrying on it duplicates nothing. What only
    shows when enqueuing (a broker that is down, no ``django.tasks`` backend) is logged after
    the commit instead.
    """
    if target == 'celery':
        if celery_send_scheduled is None:
            raise SiteMessageConfigurationError(
                'SITEMESSAGE_ENQUEUE_ON_SCHEDULE is "celery" but Celery is not installed: '
                'pip install "django-sitemessage[celery]"'
            )
    elif target != 'django_tasks':
        raise SiteMessageConfigurationError(
            f'SITEMESSAGE_ENQUEUE_ON_SCHEDULE must be "celery", "django_tasks" or None, got {target!r}.'
        )


def enqueue_send(target: str, priority: Optional[int] = None) -> None:
    """Enqueue a send pass on ``'celery'`` or ``'django_tasks'``.

    Called after the scheduling transaction committed (see :mod:`sitemessage.background.wakeup`): a Celery
    broker error reaches the caller, which logs it; a ``django.tasks`` backend that cannot take
    the task is logged here. Either way the messages stay queued for the next run.
    """
    check_target(target)
    if target == 'celery':
        assert celery_send_scheduled is not None  # check_target() refused a missing Celery
        celery_send_scheduled.delay(priority)
    else:
        try:
            get_django_task().enqueue(priority)
        except Exception:
            LOGGER.exception(
                'sitemessage: could not enqueue the django.tasks send task; the messages stay queued for the next run'
            )
