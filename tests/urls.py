from django.contrib import admin
from django.urls import include, path

from sitemessage.toolbox import get_sitemessage_inbox_urls, get_sitemessage_urls
from tests.testapp.views import notify_team, user_preferences, welcome

urlpatterns = [
    path('admin/', admin.site.urls),
    path('prefs/', user_preferences),
    path('welcome/', welcome),
    path('notify-team/', notify_team),
]
urlpatterns += get_sitemessage_urls()
urlpatterns += get_sitemessage_inbox_urls()

try:
    import anymail  # noqa: F401  (the env without extras has no anymail)
except ImportError:
    pass
else:
    from sitemessage.tracking import anymail_urlpatterns

    urlpatterns.append(path('anymail/', include((anymail_urlpatterns(), 'anymail'))))
