"""The gateway role: dcf.v1.Gateway, routing each call to a worker of its function.

``core`` is the servicer and the relay (deadline, admission, upload, answer);
``routing`` keeps a channel per worker address; ``replay`` holds the start of an
input so a call refused by a dying replica can be retried; ``upstream`` reads the
worker's answer; ``pace`` bounds how slowly a caller may send; ``metrics`` counts
for Prometheus. Imports: ``server.rpc`` and the top-level modules; no other role.
"""
