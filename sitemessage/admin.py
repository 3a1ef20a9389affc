"""Admin pages for messages, dispatches, their errors and subscriptions."""
from django import forms
from django.contrib import admin, messages as admin_messages
from django.forms.models import BaseInlineFormSet
from django.utils.translation import gettext_lazy as _, ngettext

from .models import Dispatch, DispatchError, Message, Subscription


class BoundedInlineFormSet(BaseInlineFormSet):
    """Shows only the first ``max_shown`` related rows: a message may have a great many dispatches
    (the Dispatch list shows them all, filtered and paginated)."""

    max_shown = 100

    def get_queryset(self):
        if not hasattr(self, '_queryset'):
            self._queryset = super().get_queryset()[:self.max_shown]
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


class MessageAdmin(admin.ModelAdmin):
    form = MessageForm
    list_display = ('time_created', 'cls', 'priority', 'dispatches_ready')
    list_filter = ('cls', 'dispatches_ready')
    raw_id_fields = ('sender',)
    ordering = ('-time_created',)
    inlines = (DispatchInlineAdmin,)
    show_full_result_count = False


class DispatchAdmin(admin.ModelAdmin):
    list_display = ('time_created', 'dispatch_status', 'address', 'time_dispatched', 'messenger', 'retry_count')
    list_filter = ('dispatch_status', 'messenger')
    list_select_related = False
    search_fields = ('=address',)
    ordering = ('-time_created',)
    raw_id_fields = ('recipient', 'message')
    readonly_fields = ('retry_count', 'time_dispatched', 'next_attempt_at', 'lease_until', 'message_cache')
    actions = ['schedule_failed']
    inlines = (DispatchErrorInlineAdmin,)
    show_full_result_count = False

    @admin.action(description=_('Make selected dispatches pending'))
    def schedule_failed(self, request, queryset):
        """Queue the selected dispatches again, with a fresh retry budget."""
        count = queryset.update(dispatch_status=Dispatch.DISPATCH_STATUS_PENDING, retry_count=0,
                                next_attempt_at=None, lease_until=None, claim_token=None)
        self.message_user(request, ngettext('%d dispatch is pending again.', '%d dispatches are pending again.',
                                            count) % count, admin_messages.SUCCESS)


class DispatchErrorAdmin(admin.ModelAdmin):
    list_display = ('time_created', 'dispatch')
    ordering = ('-time_created',)
    readonly_fields = ('time_created', 'dispatch', 'error_log')
    raw_id_fields = ('dispatch',)
    show_full_result_count = False


class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ('time_created', 'message_cls', 'messenger_cls', 'recipient', 'address')
    ordering = ('-time_created',)
    readonly_fields = ('time_created',)
    raw_id_fields = ('recipient',)
    list_filter = ('message_cls', 'messenger_cls')
    list_select_related = ('recipient',)
    search_fields = ('=address',)


admin.site.register(Message, MessageAdmin)
admin.site.register(Dispatch, DispatchAdmin)
admin.site.register(DispatchError, DispatchErrorAdmin)
admin.site.register(Subscription, SubscriptionAdmin)
