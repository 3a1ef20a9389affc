from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ('sitemessage', '0007_message_preparation_and_dispatch_address_index'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='message',
            name='digest_closes_at',
            field=models.DateTimeField(
                blank=True,
                editable=False,
                help_text='The digest is sent when its window closes.',
                null=True,
                verbose_name='Digest window closes at',
            ),
        ),
        migrations.AddField(
            model_name='message',
            name='digest_key',
            field=models.CharField(
                blank=True,
                default='',
                help_text='The recipient and key of the digest window this message collects; empty: not a digest.',
                max_length=250,
                verbose_name='Digest key',
            ),
        ),
        migrations.AddField(
            model_name='message',
            name='digest_open',
            field=models.BooleanField(
                blank=True,
                default=None,
                editable=False,
                help_text='Set while later messages may still join the digest (until its window is sealed).',
                null=True,
                verbose_name='Digest window open',
            ),
        ),
        migrations.AddConstraint(
            model_name='message',
            constraint=models.UniqueConstraint(
                fields=('cls', 'digest_key', 'digest_open'), name='sitemessage_digest_open_uniq'
            ),
        ),
    ]
