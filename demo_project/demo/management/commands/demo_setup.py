from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from sitemessage.models import Subscription

USERS = [
    # username, password, e-mail, superuser
    ('demo', 'demo', 'demo@example.com', True),
    ('alice', 'alice', 'alice@example.com', False),
]


class Command(BaseCommand):
    help = 'Creates the demo users (once) and prints their credentials.'

    def handle(self, *args, **options):
        user_model = get_user_model()
        for username, password, email, is_superuser in USERS:
            user, created = user_model.objects.get_or_create(
                username=username, defaults={'email': email, 'is_staff': is_superuser, 'is_superuser': is_superuser}
            )
            if created:
                user.set_password(password)
                user.save()
                # New users start subscribed to the digest by e-mail, so unsubscribe links have work to do.
                Subscription.create(user, 'weekly_digest', 'smtp')
            role = 'superuser' if is_superuser else 'user'
            self.stdout.write(f'Demo {role}: username "{username}", password "{password}" ({email})')
