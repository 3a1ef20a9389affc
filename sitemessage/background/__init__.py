"""Delivery outside the request: the worker, waking it (NOTIFY, Redis, sockets), send tasks (Celery, ``django.tasks``).

Nothing below this package imports it: models announce new work with the
:data:`sitemessage.signals.queue_changed` signal, and :func:`sitemessage.background.wakeup.connect`
(called from ``AppConfig.ready()``) hooks the wake-up to it.
"""
