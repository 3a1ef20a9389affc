"""Signals sent by the bundled views.

Each is sent with the message type class as ``sender`` (``None`` when the link could not be
resolved) and the keyword arguments ``request``, ``message`` and ``dispatch``.
"""
from django.dispatch import Signal

sig_unsubscribe_success = Signal()
sig_unsubscribe_failed = Signal()
sig_mark_read_success = Signal()
sig_mark_read_failed = Signal()
