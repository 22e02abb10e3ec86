"""gRPC plumbing shared by every role: server start-up (``server``), TLS and tokens
(``security``), the Call stream's framing (``framing``), errors to statuses and
failure records (``status``), HOST:PORT text (``address``) and request ids
(``callinfo``). Imports: the top-level modules of ``server`` and ``handlers``' error
model only; no role.
"""
