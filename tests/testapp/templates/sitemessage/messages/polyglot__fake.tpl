{% load i18n %}{% get_current_language as LANG %}[{{ LANG }}] {% translate "No Subject" %}, {{ name }}
