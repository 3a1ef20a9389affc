"""Reusable Django application delivering messages from a site to its users over many channels."""

VERSION = (2, 0, 0)

# Ignored by Django 3.2+ (the single AppConfig is picked up automatically); kept for 1.4.0 compatibility.
default_app_config = 'sitemessage.apps.SitemessageConfig'
