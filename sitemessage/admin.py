"""Admin pages for messages, dispatches, their errors and subscriptions.

Everything shown comes from outside (subjects, addresses, error logs, rendered messages) and is
escaped: lists through Django's own escaping and ``format_html``, previews in a ``<pre>`` or in a
sandboxed ``<iframe srcdoc>`` that runs no script.
"""

from __future__ import annotations

from typing import Optional

from django import forms
from django.contrib import admin
from django.contrib import messages as admin_messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce, Substr
from django.forms.models import BaseInlineFormSet
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .models import Dispatch, DispatchError, IdempotencyKey, Message, Subscription, Suppression
from .preview import render_previews
from .signals import queue_changed
from .throttles import THROTTLED

SENT = Dispatch.DISPATCH_STATUS_SENT


class ListStyles:
    """The lists' stylesheet: long texts wrap, so every list fits 1280 px (sitemessage/admin.css)."""

    class Media:
        css = {'all': ('sitemessage/admin.css',)}


def _cut(text: Optional[str], length: int):
    """Show the start of a long text; the whole of it (as far as loaded) in a tooltip."""
    if not text:
        return None
    short = Truncator(' '.join(text.split())).chars(length)
    return format_html('<span title="{}">{}</span>', text, short)


def _dispatch_count(statuses):
    """The number of a message's dispatches (with one of ``statuses``), as an annotation."""
    dispatches = Dispatch.objects.filter(message=OuterRef('pk')).order_by()
    if statuses is not None:
        dispatches = dispatches.filter(dispatch_status__in=statuses)
    counted = dispatches.values('message').annotate(n=Count('pk')).values('n')
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def _count_column(name: str, description):
    """A sortable list column showing the annotation ``name`` (see ``MessageAdmin.COUNTS``)."""

    @admin.display(description=description, ordering=name)
    def column(self, message):
        return getattr(message, name)

    column.__name__ = name
    return column


class BoundedInlineFormSet(BaseInlineFormSet):
    """Shows only the first ``max_shown`` related rows: a message may have a great many dispatches
    (the Dispatch list shows them all, filtered and paginated)."""

    max_shown = 100

    def get_queryset(self):
        if not hasattr(self, '_queryset'):
            self._queryset = super().get_queryset()[: self.max_shown]
        return self._queryset


class DispatchInlineAdmin(admin.TabularInline):
    model = Dispatch
    extra = 0
    formset = BoundedInlineFormSet
    raw_id_fields = ('recipient',)
    # The recipient is shown, not edited, here: a raw-id widget costs a query per row.
    readonly_fields = ('recipient', 'retry_count')

    def get_queryset(self, request):
        return super().get_queryset(request).select_related('recipient')


class DispatchErrorInlineAdmin(admin.TabularInline):
    model = DispatchError
    extra = 0
    formset = BoundedInlineFormSet
    readonly_fields = ('time_created', 'dispatch', 'error_log')


class MessageForm(forms.ModelForm):
    """Edits the context as JSON and lets the group mark be empty (its usual value)."""

    class Meta:
        model = Message
        fields = '__all__'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if 'group_mark' in self.fields:
            self.fields['group_mark'].required = False
        if 'context' in self.fields:
            self.fields['context'] = forms.JSONField(label=_('Message context'), required=False)

    def clean_context(self):
        return self.cleaned_data.get('context') or {}


class DigestFilter(admin.SimpleListFilter):
    """Digests (sitemessage.digests): those whose window still collects messages, and closed ones."""

    title = _('digest window')
    parameter_name = 'digest'

    def lookups(self, request, model_admin):
        return (('collecting', _('Collecting')), ('closed', _('Closed')), ('none', _('Not a digest')))

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == 'collecting':
            return queryset.filter(digest_open=True, digest_closes_at__gt=now)
        if self.value() == 'closed':
            return queryset.exclude(digest_key='').exclude(digest_open=True, digest_closes_at__gt=now)
        if self.value() == 'none':
            return queryset.filter(digest_key='')
        return queryset


class ThrottledFilter(admin.SimpleListFilter):
    """Dispatches a throttle kept from being sent (sitemessage.throttles): failed, with that reason."""

    title = _('throttled')
    parameter_name = 'throttled'

    def lookups(self, request, model_admin):
        return (('yes', _('Yes')), ('no', _('No')))

    def queryset(self, request, queryset):
        throttled = Exists(DispatchError.objects.filter(dispatch=OuterRef('pk'), error_log__startswith=THROTTLED))
        if self.value() == 'yes':
            return queryset.filter(throttled, dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)
        if self.value() == 'no':
            return queryset.exclude(throttled)
        return queryset


class MessageAdmin(ListStyles, admin.ModelAdmin):
    form = MessageForm
    list_display = (
        'time_created',
        'cls',
        'subject',
        'priority',
        'dispatches_ready',
        'count_total',
        'count_pending',
        'count_sent',
        'count_error',
        'count_failed',
    )  # send_at, expires_at and digest windows: filters and the change page (the list must fit 1280 px)
    list_filter = ('cls', 'dispatches_ready', DigestFilter, 'send_at', 'expires_at')
    search_fields = ('=idempotency_key',)
    readonly_fields = ('send_at', 'expires_at', 'idempotency_key', 'digest_key', 'digest_closes_at', 'digest_open')
    raw_id_fields = ('sender',)
    ordering = ('-time_created',)
    inlines = (DispatchInlineAdmin,)
    show_full_result_count = False

    # Dispatch counts by status (None: all), sortable. Correlated subqueries, not a join with
    # COUNT(...) FILTER: they are counted for the rows of the page only (PostgreSQL, 50,000 messages
    # with 500,000 dispatches: 24 ms instead of 441 ms for a page of 100).
    COUNTS = {
        'count_total': None,
        'count_pending': (Dispatch.DISPATCH_STATUS_PENDING, Dispatch.DISPATCH_STATUS_PROCESSING),
        'count_sent': (SENT,),
        'count_error': (Dispatch.DISPATCH_STATUS_ERROR,),
        'count_failed': (Dispatch.DISPATCH_STATUS_FAILED,),
    }

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith('_changelist'):
            queryset = queryset.annotate(**{name: _dispatch_count(statuses) for name, statuses in self.COUNTS.items()})
        return queryset

    @admin.display(description=_('Subject'))
    def subject(self, message):
        context = message.context if isinstance(message.context, dict) else {}
        text = context.get('subject') or context.get('stext_')
        return _cut(text if isinstance(text, str) else None, 60)

    count_total = _count_column('count_total', _('Dispatches'))
    count_pending = _count_column('count_pending', _('Pending'))
    count_sent = _count_column('count_sent', _('Sent'))
    count_error = _count_column('count_error', _('Error'))
    count_failed = _count_column('count_failed', _('Failed'))

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                '<path:object_id>/preview/', self.admin_site.admin_view(self.preview_view), name='%s_%s_preview' % info
            ),
            *super().get_urls(),
        ]

    def preview_view(self, request, object_id):
        """The message as each of its messengers renders it (text escaped, HTML in a sandbox)."""
        message = self.get_object(request, object_id)
        if message is None:
            raise Http404(gettext('Message with ID “%s” doesn’t exist.') % object_id)
        if not self.has_view_or_change_permission(request, message):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            'title': gettext('Preview of message %s') % message.pk,
            'opts': self.opts,
            'original': message,
            'previews': render_previews(message),
        }
        return TemplateResponse(request, 'admin/sitemessage/message/preview.html', context)


class DispatchAdmin(ListStyles, admin.ModelAdmin):
    list_display = (
        'time_created',
        'dispatch_status',
        'message_type',
        'to',
        'messenger',
        'time_dispatched',
        'attempts',
        'last_error',
    )  # next_attempt_at and expires_at: filters and the change page (the list must fit 1280 px)
    list_filter = (
        'dispatch_status',
        ThrottledFilter,
        'messenger',
        ('message__cls', admin.AllValuesFieldListFilter),
        'next_attempt_at',
        'expires_at',
        'provider_status',
        'language',
    )
    list_select_related = ('recipient',)
    search_fields = ('=address', '=provider_message_id')
    ordering = ('-time_created',)
    raw_id_fields = ('recipient', 'message')
    readonly_fields = (
        'retry_count',
        'time_dispatched',
        'next_attempt_at',
        'expires_at',
        'language',
        'lease_until',
        'provider_message_id',
        'provider_status',
        'provider_status_time',
        'message_cache',
        'fallback_of_link',
        'fallback_dispatch_link',
    )
    actions = ['schedule_failed', 'resend_sent']
    inlines = (DispatchErrorInlineAdmin,)
    show_full_result_count = False

    def get_queryset(self, request):
        # The latest error of each dispatch in the same query (its first 300 characters).
        last_error = (
            DispatchError.objects.filter(dispatch=OuterRef('pk'))
            .order_by('-pk')
            .annotate(head=Substr('error_log', 1, 300))
            .values('head')[:1]
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_type=F('message__cls'),
                last_error=Subquery(last_error),
                fallback_dispatch_pk=F('fallback_dispatch__pk'),
            )
        )

    @admin.display(description=_('Message type'), ordering='message__cls')
    def message_type(self, dispatch):
        return dispatch.message_type

    @admin.display(description=_('Recipient'), ordering='address')
    def to(self, dispatch):
        """The address; below it the user (if any) and the fallback links: one column, so the list fits."""
        lines = [dispatch.address]
        if dispatch.recipient_id is not None:
            lines.append(format_html('<small class="sitemessage-user">{}</small>', dispatch.recipient))
        fallback = fallback_links(dispatch)
        if fallback:
            lines.append(format_html('<small class="sitemessage-fallback">{}</small>', fallback))
        if len(lines) == 1:
            return dispatch.address
        return format_html_join(mark_safe('<br>'), '{}', ((line,) for line in lines))

    @admin.display(description=_('Failed attempts'), ordering='retry_count')
    def attempts(self, dispatch):
        return dispatch.retry_count

    @admin.display(description=_('Last error'))
    def last_error(self, dispatch):
        return _cut(dispatch.last_error, 90)

    @admin.display(description=_('Fallback of'))
    def fallback_of_link(self, dispatch):
        return dispatch_link(dispatch.fallback_of_id) if dispatch.fallback_of_id is not None else '-'

    @admin.display(description=_('Fallback dispatch'))
    def fallback_dispatch_link(self, dispatch):
        pk = getattr(dispatch, 'fallback_dispatch_pk', None)
        return dispatch_link(pk) if pk is not None else '-'

    @admin.action(description=_('Make selected dispatches pending'))
    def schedule_failed(self, request, queryset):
        """Retry: queue the selected dispatches again with a fresh retry budget; never sent ones.

        Dispatches a worker holds under a live lease are left to it: re-queued, they could go out twice.
        """
        now = timezone.now()
        sent = queryset.filter(dispatch_status=SENT).count()
        busy = queryset.filter(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING, lease_until__gte=now).count()
        count = (
            queryset.exclude(dispatch_status=SENT)
            .exclude(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING, lease_until__gte=now)
            .update(
                dispatch_status=Dispatch.DISPATCH_STATUS_PENDING,
                retry_count=0,
                next_attempt_at=None,
                expires_at=None,  # sent now, as asked: its send_at and expiry no longer apply
                lease_until=None,
                claim_token=None,
            )
        )
        if count:
            queue_changed.send(sender=Dispatch, using=queryset.db)
        self.message_user(
            request,
            ngettext('%d dispatch is pending again.', '%d dispatches are pending again.', count) % count,
            admin_messages.SUCCESS,
        )
        if sent:
            self.message_user(
                request,
                ngettext(
                    'Skipped %d sent dispatch: use “Resend selected sent dispatches” to send it again.',
                    'Skipped %d sent dispatches: use “Resend selected sent dispatches” to send them again.',
                    sent,
                )
                % sent,
                admin_messages.WARNING,
            )
        if busy:
            self.message_user(
                request,
                ngettext(
                    'Skipped %d dispatch being sent right now.', 'Skipped %d dispatches being sent right now.', busy
                )
                % busy,
                admin_messages.WARNING,
            )

    @admin.action(description=_('Resend selected sent dispatches'), permissions=['change'])
    def resend_sent(self, request, queryset):
        """Send dispatches that were sent already once more, after a confirmation page.

        Their text is compiled again from the message's current context.
        """
        sent = queryset.filter(dispatch_status=SENT)
        if request.POST.get('post') == 'yes':
            count = sent.update(
                dispatch_status=Dispatch.DISPATCH_STATUS_PENDING,
                retry_count=0,
                message_cache='',
                provider_message_id=None,  # the provider's news was of the earlier e-mail
                provider_status=None,
                provider_status_time=None,
                next_attempt_at=None,
                expires_at=None,
                lease_until=None,
                claim_token=None,
            )
            if count:
                queue_changed.send(sender=Dispatch, using=queryset.db)
            self.message_user(
                request,
                ngettext('%d dispatch will be sent again.', '%d dispatches will be sent again.', count) % count,
                admin_messages.SUCCESS,
            )
            return None
        count = sent.count()
        skipped = queryset.count() - count
        context = {
            **self.admin_site.each_context(request),
            'title': gettext('Resend sent dispatches?'),
            'opts': self.opts,
            'media': self.media,
            'shown': sent.select_related('recipient').annotate(message_type=F('message__cls'))[:100],
            'count': count,
            'skipped': skipped,
            'action_checkbox_name': helpers.ACTION_CHECKBOX_NAME,
            'selected': request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            'select_across': request.POST.get('select_across', '0'),
        }
        return TemplateResponse(request, 'admin/sitemessage/dispatch/resend_confirmation.html', context)


def fallback_links(dispatch: Dispatch) -> str:
    """Links to the dispatch this one replaces and to the one replacing it (channel fallback), or ''."""
    links = []
    if dispatch.fallback_of_id is not None:
        links.append(format_html('{} {}', _('replaces'), dispatch_link(dispatch.fallback_of_id)))
    if getattr(dispatch, 'fallback_dispatch_pk', None) is not None:
        links.append(format_html('{} {}', _('replaced by'), dispatch_link(dispatch.fallback_dispatch_pk)))
    return format_html_join(mark_safe(', '), '{}', ((link,) for link in links)) if links else ''


def dispatch_link(pk: int) -> str:
    """A link to a dispatch's change page in the admin."""
    url = reverse('admin:sitemessage_dispatch_change', args=(pk,))
    return format_html('<a href="{}">#{}</a>', url, pk)


class DispatchErrorAdmin(ListStyles, admin.ModelAdmin):
    list_display = ('time_created', 'dispatch', 'error')
    ordering = ('-time_created',)
    readonly_fields = ('time_created', 'dispatch', 'error_log')
    raw_id_fields = ('dispatch',)
    show_full_result_count = False

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(head=Substr('error_log', 1, 300)).defer('error_log')

    @admin.display(description=_('Text'))
    def error(self, error):
        return _cut(error.head, 120)


class SubscriptionAdmin(ListStyles, admin.ModelAdmin):
    list_display = ('time_created', 'message_cls', 'messenger_cls', 'recipient', 'address')
    ordering = ('-time_created',)
    readonly_fields = ('time_created',)
    raw_id_fields = ('recipient',)
    list_filter = ('message_cls', 'messenger_cls')
    list_select_related = ('recipient',)
    search_fields = ('=address',)


class IdempotencyKeyAdmin(ListStyles, admin.ModelAdmin):
    """The idempotency keys still kept (see docs/idempotency.rst); deleting one lets the key be used again."""

    list_display = ('time_created', 'key', 'message_ids')
    list_filter = ('time_created',)
    search_fields = ('=key',)
    ordering = ('-time_created',)
    readonly_fields = ('time_created', 'key', 'message_ids')
    show_full_result_count = False


class SuppressionAdmin(ListStyles, admin.ModelAdmin):
    """The suppression list: add an address by hand, delete an entry to send to the address again."""

    list_display = ('address', 'messenger', 'active', 'reason', 'failures', 'time_suppressed', 'short_note')
    list_filter = ('active', 'reason', 'messenger')
    search_fields = ('=address',)
    ordering = ('-time_created',)
    readonly_fields = ('time_created', 'failures')
    fields = ('address', 'messenger', 'reason', 'active', 'time_suppressed', 'failures', 'note', 'time_created')
    show_full_result_count = False

    @admin.display(description=_('Note'))
    def short_note(self, suppression):
        return _cut(suppression.note, 90)


admin.site.register(Message, MessageAdmin)
admin.site.register(Dispatch, DispatchAdmin)
admin.site.register(DispatchError, DispatchErrorAdmin)
admin.site.register(Subscription, SubscriptionAdmin)
admin.site.register(IdempotencyKey, IdempotencyKeyAdmin)
admin.site.register(Suppression, SuppressionAdmin)
