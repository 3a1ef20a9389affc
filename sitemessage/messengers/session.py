"""Where delivery sessions lived before :mod:`sitemessage.delivery`; the same module, under its old name.

``sitemessage.messengers.session`` *is* :mod:`sitemessage.delivery.session`.
"""

import sys

from ..delivery import session as _session

sys.modules[__name__] = _session
