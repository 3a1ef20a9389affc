{% load i18n %}[ru-template] {% translate "No Subject" %}, {{ name }}
