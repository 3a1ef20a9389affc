"""Signals of sitemessage.

The views send ``sig_*`` with the message type class as ``sender`` (``None`` when the link could
not be resolved) and the keyword arguments ``request``, ``message`` and ``dispatch``.

``queue_changed`` is sent when new work is scheduled, inside the scheduling transaction, with
``using`` (the database alias) and ``inserted`` (True when the work is new dispatch rows: on
PostgreSQL a trigger of the ``sitemessage_dispatch`` table announces those in the same round trip).
Models send it rather than calling the background machinery, so models import nothing above
them; :mod:`sitemessage.background` connects its receiver in ``AppConfig.ready()``. A receiver
may raise to refuse the scheduling (nothing is stored).
"""

from django.dispatch import Signal

sig_unsubscribe_success = Signal()
sig_unsubscribe_failed = Signal()
sig_mark_read_success = Signal()
sig_mark_read_failed = Signal()

queue_changed = Signal()
