"""The project app of tests/process_settings.py: registers an SMTP messenger for the local sink."""

import os

if os.environ.get('SITEMESSAGE_CELERY_BROKER'):
    # As a project's package __init__ does in Celery's Django guide: the app exists before any task is sent.
    from tests.celery_app import app as celery_app  # noqa: F401
