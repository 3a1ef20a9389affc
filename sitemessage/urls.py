"""URL patterns of the bundled views; attach them with ``urlpatterns += get_sitemessage_urls()``."""

from django.urls import re_path

from . import views


def get_sitemessage_urls() -> list:
    """Return the URL patterns of the unsubscribe and mark-read views."""
    return [
        re_path(
            r'^messages/unsubscribe/(?P<message_id>\d+)/(?P<dispatch_id>\d+)/(?P<hashed>[^/]+)/$',
            views.unsubscribe,
            name='sitemessage_unsubscribe',
        ),
        re_path(
            r'^messages/ping/(?P<message_id>\d+)/(?P<dispatch_id>\d+)/(?P<hashed>[^/]+)/$',
            views.mark_read,
            name='sitemessage_mark_read',
        ),
    ]


urlpatterns = get_sitemessage_urls()
