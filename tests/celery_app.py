"""The Celery app of the process tests (tests/background/test_worker.py), set up as Celery's Django guide says.

Configured from tests/process_settings.py (``CELERY_*`` settings: the Redis broker and result
backend, the task queue); ``autodiscover_tasks()`` finds ``sitemessage.tasks`` in INSTALLED_APPS.
Start a worker with ``celery -A tests.celery_app worker``.
"""

import os

from celery import Celery

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.process_settings')

app = Celery('sitemessage_process_tests')
app.config_from_object('django.conf:settings', namespace='CELERY')
app.autodiscover_tasks()
