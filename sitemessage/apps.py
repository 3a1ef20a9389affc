from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

from .messages import register_builtin_message_types
from .registry import import_project_sitemessage_modules
from .settings import get_setting


class SitemessageConfig(AppConfig):
    """Registers the built-in message types, discovers projects' ``sitemessages`` modules, wakes workers."""

    name = 'sitemessage'
    verbose_name = _('Messaging')
    # Integer ids, whatever DEFAULT_AUTO_FIELD says: existing databases keep their schema.
    default_auto_field = 'django.db.models.AutoField'

    def ready(self):
        # Imported here, as Django advises for checks and signal receivers: the background
        # package imports models, which are not loaded yet when Django imports this module.
        from . import (
            checks,  # noqa: F401 -- importing registers the system checks
            tracking,
        )
        from .background import wakeup

        wakeup.connect()
        tracking.connect()  # ESP delivery reports, when django-anymail is installed
        # Built-ins first, so that a project's own type registered under the same alias wins.
        if get_setting('INIT_BUILTIN_MESSAGE_TYPES'):
            register_builtin_message_types()
        import_project_sitemessage_modules()
