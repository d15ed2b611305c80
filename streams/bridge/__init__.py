"""The SSE bridge: result topics over HTTP (``soma bridge``).

``fanout`` reads the result topics once per process and hands each record to the matching clients;
``auth`` turns a JWT into a tenant and scopes; ``app`` is the aiohttp application; ``client`` is the
Python helper services use to follow a session.
"""
