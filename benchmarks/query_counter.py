"""Counting SQL statements in a benchmark, shared by ``send_queue.py`` and ``compare.py``.

No imports from the repository: ``compare.py`` children of the baselines import it too.
"""


class QueryCounter:
    """``connection.execute_wrapper`` that counts statements without storing them."""

    def __init__(self):
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)
