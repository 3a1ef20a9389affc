"""Demo pages: schedule messages, edit subscriptions, look at what was delivered."""

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.utils.html import escape, linebreaks
from django.views.decorators.http import require_POST

from sitemessage.models import Dispatch
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import (
    get_user_preferences_for_ui,
    recipients,
    schedule_messages,
    set_user_preferences_from_request,
)

from . import outbox as outbox_file
from .forms import ScheduleForm
from .sitemessages import ActivityDigest, SecurityAlert, WeeklyDigest

DEMO_USERNAME = 'demo'


def home(request):
    """A form that schedules a message; the sender (sitemessage_worker) delivers it within a few seconds."""
    form = ScheduleForm(request.POST or None)
    if request.method == 'POST' and form.is_valid():
        data = form.cleaned_data
        to = form.targets()
        sender = request.user if request.user.is_authenticated else None
        if data['kind'] == 'email_plain':
            schedule_email(data['text'], to, subject=data['subject'], sender=sender)
        elif data['kind'] == 'email_html':
            # A dict renders the built-in HTML template; its `contents` is inserted as HTML, so escape it.
            schedule_email({'contents': linebreaks(escape(data['text']))}, to, subject=data['subject'], sender=sender)
        else:
            items = [line.strip() for line in data['text'].splitlines() if line.strip()]
            schedule_messages(WeeklyDigest(items), recipients(data['messenger'], to), sender=sender)
        messages.success(
            request,
            f'Scheduled for {", ".join(map(str, to))}. The sender delivers it within a few seconds: see the outbox.',
        )
        return redirect('home')
    dispatches = Dispatch.objects.select_related('message').order_by('-pk')[:15]
    return render(request, 'demo/home.html', {'form': form, 'dispatches': dispatches})


@login_required
def preferences(request):
    """The user's subscriptions, as the documentation shows them."""
    if request.method == 'POST':
        set_user_preferences_from_request(request)
        messages.success(request, 'Preferences saved.')
        return redirect('preferences')
    subscr_prefs = get_user_preferences_for_ui(request.user)
    return render(request, 'demo/preferences.html', {'subscr_prefs': subscr_prefs})


@login_required
@require_POST
def schedule_digest(request):
    """Schedule a digest without recipients: dispatches are made for current subscribers."""
    WeeklyDigest.create(['sitemessage 2.0 released', 'Crash-safe delivery', 'One-click unsubscribe'])
    messages.success(request, 'Digest scheduled for all subscribers.')
    return redirect('preferences')


@require_POST
def flood(request):
    """Five activity e-mails and five security alerts at once: one digest, two alerts, three throttled."""
    to = recipients('smtp', 'flood@example.com')
    for n in range(1, 6):
        schedule_messages(ActivityDigest(f'Event {n}: somebody liked your post'), to)
        schedule_messages(SecurityAlert(f'Alert {n}: a new login to your account'), to)
    messages.success(
        request,
        'Scheduled 5 activity e-mails and 5 security alerts. Two alerts go out now, three are throttled (Failed, '
        '"throttled"); the 5 activity e-mails arrive as one digest when its 15-second window closes.',
    )
    return redirect('home')


def outbox(request):
    """What the local SMTP sink received, and what the console messenger printed."""
    return render(request, 'demo/outbox.html', {'mails': outbox_file.read(settings.DEMO_OUTBOX)})


def login_as_demo(request):
    """Demo convenience: log in as the demo user without a password form."""
    user = get_user_model().objects.filter(username=DEMO_USERNAME).first()
    if user is None:
        messages.error(request, 'The demo user does not exist yet: run `make demo`.')
        return redirect('home')
    login(request, user, backend='django.contrib.auth.backends.ModelBackend')
    next_url = request.GET.get('next') or '/'
    return redirect(next_url if next_url.startswith('/') and not next_url.startswith('//') else '/')
