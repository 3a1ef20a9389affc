"""Where the delivery loop lived before :mod:`sitemessage.delivery`; the same module, under its old name.

``sitemessage.sending`` *is* :mod:`sitemessage.delivery.run`, so imports and patches of its
names keep working.
"""

import sys

from .delivery import run as _run

sys.modules[__name__] = _run
