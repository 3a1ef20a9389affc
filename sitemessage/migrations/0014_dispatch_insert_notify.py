"""PostgreSQL only: new dispatch rows announce themselves (``NOTIFY sitemessage_queue``) from a trigger.

The notification is queued in the inserting transaction and delivered when it commits, like the
``NOTIFY`` the scheduling process used to send after the commit, but without a round trip of its
own: scheduling one message costs what 1.4.0's did. PostgreSQL sends identical notifications of
one transaction once. Other databases: nothing to do (their wake-ups are not in the database).
"""

from django.db import migrations

FUNCTION = 'sitemessage_dispatch_inserted_notify'  # the trigger has the same name

CREATE = [
    f"""CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sitemessage_queue', '');
    RETURN NULL;
END;
$$""",
    f'DROP TRIGGER IF EXISTS {FUNCTION} ON sitemessage_dispatch',
    f'CREATE TRIGGER {FUNCTION} AFTER INSERT ON sitemessage_dispatch FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()',
]

DROP = [
    f'DROP TRIGGER IF EXISTS {FUNCTION} ON sitemessage_dispatch',
    f'DROP FUNCTION IF EXISTS {FUNCTION}()',
]


def _on_postgres(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == 'postgresql':
            for statement in statements:
                schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ('sitemessage', '0013_channel_fallback'),
    ]

    operations = [
        migrations.RunPython(_on_postgres(CREATE), _on_postgres(DROP), elidable=False),
    ]
