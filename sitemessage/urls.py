"""URL patterns of the bundled views; attach them with ``urlpatterns += get_sitemessage_urls()``.

The in-app inbox pages are attached on their own: ``urlpatterns += get_sitemessage_inbox_urls()``.
"""

from django.urls import path, re_path

from . import inbox_views, views


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


def get_sitemessage_inbox_urls(prefix: str = 'messages/inbox/') -> list:
    """Return the URL patterns of the in-app inbox: the feed page, its JSON, mark read, mark all read, archive."""
    return [
        path(prefix, inbox_views.inbox, name='sitemessage_inbox'),
        path(f'{prefix}feed.json', inbox_views.inbox_json, name='sitemessage_inbox_json'),
        path(f'{prefix}read-all/', inbox_views.mark_all_read, name='sitemessage_inbox_mark_all_read'),
        path(f'{prefix}<str:item_id>/read/', inbox_views.mark_read, name='sitemessage_inbox_mark_read'),
        path(f'{prefix}<str:item_id>/archive/', inbox_views.archive, name='sitemessage_inbox_archive'),
    ]


urlpatterns = get_sitemessage_urls()
