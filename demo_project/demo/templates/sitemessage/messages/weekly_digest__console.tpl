{% autoescape off %}{{ greeting }} Week {{ week }}:
{% for item in items %}* {{ item }}
{% endfor %}{% if directive_unsubscribe %}Unsubscribe: {{ directive_unsubscribe }}{% endif %}{% endautoescape %}
