from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class SitemessageConfig(AppConfig):
    """Registers the built-in message types, then discovers projects' ``sitemessages`` modules."""

    name = 'sitemessage'
    verbose_name = _('Messaging')
    # The 1.4.0 schema uses integer ids: keep them whatever DEFAULT_AUTO_FIELD says.
    default_auto_field = 'django.db.models.AutoField'

    def ready(self):
        from . import checks  # noqa: F401 -- importing registers the system checks
        from .messages import register_builtin_message_types
        from .settings import get_setting
        from .utils import import_project_sitemessage_modules

        # Built-ins first, so that a project's own type registered under the same alias wins.
        if get_setting('INIT_BUILTIN_MESSAGE_TYPES'):
            register_builtin_message_types()
        import_project_sitemessage_modules()
