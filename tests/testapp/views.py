"""A preferences page as the documentation writes it (used by the view and browser tests)."""

from django.http import HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render

from sitemessage.shortcuts import aschedule_email
from sitemessage.toolbox import (
    aschedule_messages,
    get_user_preferences_for_ui,
    recipients,
    set_user_preferences_from_request,
)


def user_preferences(request):
    if not request.user.is_authenticated:
        return HttpResponseForbidden()
    if request.method == 'POST':
        set_user_preferences_from_request(request)
        return redirect(request.path)
    return render(request, 'testapp/preferences.html', {'subscr_prefs': get_user_preferences_for_ui(request.user)})


# The examples of docs/async.rst, as written there (tests/test_async_api.py).


async def welcome(request):
    to = request.GET['to']
    await aschedule_email('Welcome aboard!', to, subject='Welcome', language='ru')
    return JsonResponse({'scheduled': to})


async def notify_team(request):
    [(message, dispatches)] = await aschedule_messages(
        'Deploy finished', recipients('smtp', ['ops@example.com', 'dev@example.com'])
    )
    return JsonResponse({'message': message.pk, 'dispatches': len(dispatches)})
