Hello {{ name }}! unsubscribe={{ directive_unsubscribe }} read={{ directive_mark_read }} site={{ SITE_URL }}
