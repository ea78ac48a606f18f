"""The console listener: the REST API under ``/api/v1`` (docs/api.md).

A thin front end over the configuration's editing model: it authenticates
(:mod:`.admins`, :mod:`.throttle`), records changes (:mod:`.audit`), turns
HTTP into calls of the model and the model's answers into HTTP
(:mod:`.api`), and runs in ``smtpgate serve``'s own event loop
(:mod:`.server`). ``smtpgate admin`` manages the accounts (:mod:`.admin_cli`).
"""
