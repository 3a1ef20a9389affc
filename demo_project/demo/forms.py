from django import forms
from django.contrib.auth import get_user_model


class ScheduleForm(forms.Form):
    """What to schedule, and for whom: a user, an address, or both."""

    KIND_CHOICES = [
        ('email_plain', 'Plain text e-mail (schedule_email with a text)'),
        ('email_html', 'HTML e-mail (schedule_email with a dict, built-in template)'),
        ('weekly_digest', "Weekly digest (the demo's custom message type)"),
    ]
    MESSENGER_CHOICES = [('smtp', 'E-mail (SMTP)'), ('console', "Console (the demo's custom messenger)")]

    kind = forms.ChoiceField(choices=KIND_CHOICES, initial='email_html')
    messenger = forms.ChoiceField(
        choices=MESSENGER_CHOICES, initial='smtp', help_text='Used by the weekly digest; e-mails always go by SMTP.'
    )
    user = forms.ModelChoiceField(queryset=get_user_model().objects.order_by('username'), required=False)
    address = forms.CharField(required=False, help_text='An e-mail address (or a username for the console).')
    subject = forms.CharField(initial='Hello from sitemessage', required=False)
    text = forms.CharField(
        widget=forms.Textarea(attrs={'rows': 4}),
        initial='First line.\nSecond line, <b>escaped</b> in HTML e-mails.',
        help_text='For the digest, one item per line.',
    )

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get('user') and not cleaned.get('address'):
            raise forms.ValidationError('Pick a user or type an address.')
        if cleaned.get('kind', '').startswith('email') and cleaned.get('messenger') != 'smtp':
            cleaned['messenger'] = 'smtp'
        return cleaned

    def targets(self) -> list:
        return [target for target in (self.cleaned_data['user'], self.cleaned_data['address'].strip()) if target]
