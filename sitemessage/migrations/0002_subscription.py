from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('sitemessage', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='Subscription',
            fields=[
                ('id', models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('time_created', models.DateTimeField(auto_now_add=True, verbose_name='Time created')),
                (
                    'message_cls',
                    models.CharField(
                        db_index=True,
                        help_text='Message logic class identifier.',
                        max_length=250,
                        verbose_name='Message class',
                    ),
                ),
                (
                    'messenger_cls',
                    models.CharField(
                        db_index=True, help_text='Messenger class identifier.', max_length=250, verbose_name='Messenger'
                    ),
                ),
                (
                    'address',
                    models.CharField(help_text='Recipient address.', max_length=250, null=True, verbose_name='Address'),
                ),
                (
                    'recipient',
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=models.CASCADE,
                        to=settings.AUTH_USER_MODEL,
                        verbose_name='Recipient',
                    ),
                ),
            ],
            options={
                'verbose_name': 'Subscription',
                'verbose_name_plural': 'Subscriptions',
            },
        ),
    ]
