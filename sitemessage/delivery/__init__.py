"""The delivery engine: claim a batch, hand it to the messengers' connections, store the outcomes.

* :mod:`~sitemessage.delivery.run` -- the run: :func:`send_scheduled_messages` and its report;
* :mod:`~sitemessage.delivery.session` -- a messenger's connections over a run (threads, queue of units);
* :mod:`~sitemessage.delivery.handover` -- compiling texts, calling the messenger's hooks, storing outcomes;
* :mod:`~sitemessage.delivery.outcomes` -- what travels: a message with its dispatches, each attempt;
* :mod:`~sitemessage.delivery.ratelimit` -- quotas shared by every worker, in Django's cache.

This package imports nothing at its top, so the models can use :mod:`.outcomes` without a cycle.
"""
