"""Next hops: where the upstream leg goes, for a policy's ``upstream`` (issue 10).

:mod:`~smtpgate.routing.nexthops` is the pure logic (MX order, implicit MX,
null MX, the replies when there is no route); :mod:`~smtpgate.routing.resolver`
asks DNS for it. No sockets here beyond the resolver's queries, which the
proxy driver awaits when its session asks.
"""
