"""Counting SQL statements in a benchmark, shared by ``send_queue.py`` and ``compare.py``.

No imports from the repository: ``compare.py`` children of the baselines import it too.
"""

import threading


class QueryCounter:
    """``connection.execute_wrapper`` that counts statements without storing them.

    ``every_connection()`` also counts on the connections other threads open meanwhile (a
    library's own threads: sitemessage records sent outcomes on one).
    """

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()
        self._counting = False

    def __call__(self, execute, sql, params, many, context):
        with self._lock:
            self.count += 1
        return execute(sql, params, many, context)

    def every_connection(self):
        """A context manager: count on this thread's connection and on every connection opened meanwhile."""
        from contextlib import contextmanager

        from django.db import connection
        from django.db.backends.signals import connection_created

        @contextmanager
        def counting():
            def wrap(sender, connection, **kwargs):
                if self._counting and self not in connection.execute_wrappers:
                    connection.execute_wrappers.append(self)

            connection_created.connect(wrap, weak=False)
            self._counting = True
            try:
                with connection.execute_wrapper(self):
                    yield self
            finally:
                self._counting = False
                connection_created.disconnect(wrap)

        return counting()
