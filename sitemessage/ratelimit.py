"""Where rate limits lived before :mod:`sitemessage.delivery`; the same module, under its old name.

``sitemessage.ratelimit`` *is* :mod:`sitemessage.delivery.ratelimit`, so imports and patches of
its names (``SLEEP``, ``CLOCK``) keep working.
"""

import sys

from .delivery import ratelimit as _ratelimit

sys.modules[__name__] = _ratelimit
