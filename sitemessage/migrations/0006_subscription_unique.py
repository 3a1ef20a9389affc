"""Subscriptions become unique per (message type, messenger, user) and per (message type, messenger, address).

1.4.0 allowed duplicate rows (each one meant a duplicate dispatch). They are deleted first, keeping the
oldest row (the lowest id) of each group. MySQL/MariaDB cannot create these conditional constraints: there
the duplicates are still removed, and the application keeps rows unique.
"""

from django.conf import settings
from django.db import migrations, models
from django.db.models import Count, Min


def delete_duplicate_subscriptions(apps, schema_editor):
    subscriptions = apps.get_model('sitemessage', 'Subscription').objects.using(schema_editor.connection.alias)
    groups = (
        (('message_cls', 'messenger_cls', 'recipient'), {'recipient__isnull': False}),
        (('message_cls', 'messenger_cls', 'address'), {'recipient__isnull': True, 'address__isnull': False}),
    )
    for fields, condition in groups:
        duplicated = (
            subscriptions.filter(**condition)
            .values(*fields)
            .order_by()
            .annotate(keep_id=Min('id'), rows=Count('id'))
            .filter(rows__gt=1)
        )
        for group in list(duplicated):
            keep_id = group.pop('keep_id')
            group.pop('rows')
            subscriptions.filter(**condition, **group).exclude(pk=keep_id).delete()


class Migration(migrations.Migration):
    dependencies = [
        ('sitemessage', '0005_dispatch_lease_and_retry_time'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(delete_duplicate_subscriptions, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='subscription',
            constraint=models.UniqueConstraint(
                condition=models.Q(('recipient__isnull', False)),
                fields=('message_cls', 'messenger_cls', 'recipient'),
                name='sitemessage_subscr_user_uniq',
            ),
        ),
        migrations.AddConstraint(
            model_name='subscription',
            constraint=models.UniqueConstraint(
                condition=models.Q(('recipient__isnull', True)),
                fields=('message_cls', 'messenger_cls', 'address'),
                name='sitemessage_subscr_addr_uniq',
            ),
        ),
    ]
