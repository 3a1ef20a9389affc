{% extends "sitemessage/messages/_base.html" %}
{% block contents %}
<p>{{ greeting }} Here is what happened in week {{ week }}:</p>
<ul>{% for item in items %}
  <li>{{ item }}</li>{% empty %}
  <li>Nothing at all.</li>{% endfor %}
</ul>
{% endblock %}
