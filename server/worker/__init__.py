"""The worker role: dcf.v1.Worker, serving one function's handler.

``servicer`` checks a call, queues it, takes its upload (``received``) and runs the
handler on a thread through ``bridge``, streaming its parts back; ``local`` runs
the same handler in-process for the client's ``--local``. Imports: ``server.rpc``,
the top-level modules and ``handlers``; no other role.
"""
