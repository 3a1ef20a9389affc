"""The in-app inbox pages: a user's feed (HTML and JSON) and its mark read / mark all read / archive actions.

Every view needs a logged-in user and acts on that user's items only (the queries filter on
``request.user``): another user's item answers 404. The actions change data, so they accept POST
only (405 otherwise) and check the CSRF token even where the middleware is not installed. Item
texts are untrusted: the templates auto-escape them and the JSON carries them as plain strings.
"""

from __future__ import annotations

from typing import Any, Dict

from django.contrib.auth.decorators import login_required
from django.core.paginator import Page, Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.http import require_GET, require_POST

from .exceptions import UnknownMessageTypeError
from .links import parse_id
from .models import Dispatch
from .settings import get_setting

FEED_TEMPLATE = 'sitemessage/inbox/feed.html'
# As json_script() does: the JSON stays valid, and no "<" of an item's text can ever open a tag.
_HTML_ESCAPES = {ord('<'): '\\u003C', ord('>'): '\\u003E', ord('&'): '\\u0026'}


class HTMLSafeJSONEncoder(DjangoJSONEncoder):
    """JSON whose strings carry ``<``, ``>`` and ``&`` as ``\\u`` escapes (safe even if sniffed as HTML)."""

    def encode(self, o: Any) -> str:
        return super().encode(o).translate(_HTML_ESCAPES)


def item_title(dispatch: Dispatch) -> str:
    """The heading of a feed item: the message's ``subject`` if its context has one, else its type's title."""
    message = dispatch.message
    context = message.context if isinstance(message.context, dict) else {}
    subject = context.get('subject')
    if subject:
        return str(subject)
    try:
        return str(message.get_type().title or message.cls)
    except UnknownMessageTypeError:
        return str(message.cls)


def item_as_dict(dispatch: Dispatch) -> Dict[str, Any]:
    """One feed item as the JSON endpoint and the templates see it."""
    return {
        'id': dispatch.pk,
        'title': item_title(dispatch),
        'text': str(dispatch.message_cache or ''),
        'time': dispatch.time_dispatched,  # the JSON encoder writes it in ISO 8601
        'read': dispatch.is_read(),
    }


def feed_page(user, page_number) -> Page:
    """A page of the feed of ``user`` (out-of-range numbers give the nearest page)."""
    items = Dispatch.objects.inbox(user).select_related('message')
    return Paginator(items, get_setting('INBOX_PAGE_SIZE', check='positive_int')).get_page(page_number)


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    """The feed page of the logged-in user: ``sitemessage/inbox/feed.html``."""
    page = feed_page(request.user, request.GET.get('page'))
    return render(
        request,
        FEED_TEMPLATE,
        {
            'page': page,
            'items': [item_as_dict(dispatch) for dispatch in page],
            'unread': Dispatch.objects.inbox_unread_count(request.user),
            'poll_seconds': get_setting('INBOX_POLL_SECONDS', check='seconds'),
        },
    )


@login_required
@require_GET
def inbox_json(request: HttpRequest) -> JsonResponse:
    """The feed of the logged-in user as JSON: ``{"items": [...], "unread": N, "page": N, "num_pages": N, ...}``."""
    page = feed_page(request.user, request.GET.get('page'))
    return JsonResponse(
        {
            'items': [item_as_dict(dispatch) for dispatch in page],
            'unread': Dispatch.objects.inbox_unread_count(request.user),
            'page': page.number,
            'num_pages': page.paginator.num_pages,
            'has_next': page.has_next(),
        },
        encoder=HTMLSafeJSONEncoder,
    )


def _own_item_id(request: HttpRequest, item_id) -> int:
    """The id of an item in the user's feed; 404 for anything else (another user's, archived, unknown)."""
    pk = parse_id(item_id)
    if pk is None or not Dispatch.objects.inbox(request.user).filter(pk=pk).exists():
        raise Http404('No such inbox item.')
    return pk


def _done(request: HttpRequest, changed: int) -> HttpResponse:
    """JSON for scripts (``Accept: application/json``), else back to ``next`` (a local URL) or the feed."""
    if 'application/json' in request.headers.get('Accept', ''):
        unread = Dispatch.objects.inbox_unread_count(request.user)
        return JsonResponse({'changed': changed, 'unread': unread}, encoder=HTMLSafeJSONEncoder)
    target = request.POST.get('next', '')
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        target = reverse('sitemessage_inbox')
    return redirect(target)


@login_required
@require_POST
@csrf_protect
def mark_read(request: HttpRequest, item_id) -> HttpResponse:
    """Mark one item of the user's feed read (the dispatch's read status)."""
    return _done(request, Dispatch.objects.inbox_mark_read(request.user, [_own_item_id(request, item_id)]))


@login_required
@require_POST
@csrf_protect
def mark_all_read(request: HttpRequest) -> HttpResponse:
    """Mark every item of the user's feed read."""
    return _done(request, Dispatch.objects.inbox_mark_read(request.user))


@login_required
@require_POST
@csrf_protect
def archive(request: HttpRequest, item_id) -> HttpResponse:
    """Take one item out of the user's feed (it is marked read too)."""
    return _done(request, Dispatch.objects.inbox_archive(request.user, [_own_item_id(request, item_id)]))
