"""dcf's server: every process ``python -m server`` runs, one subpackage per role.

A call's way, and the folder of each step:

    caller ──► front ─────────────► gateway ───────► worker ─────────► handler
               http/  (HTTP, page)  gateway/ (route,  worker/ (queue,    handlers/
               oip/   (Open         queue, relay,     upload, thread,    (bytes and
                      Inference)    retry)            stream back)       params in,
               gateway/ (dcf.v1)                                         parts out)

- ``rpc/``: what every gRPC role shares: starting a server, TLS and tokens, the
  Call stream's framing, errors to statuses, addresses and request ids, and
  reading an encoded message's fields without decoding its payload (``wire``).
- ``repository/``: function folders (``function.yaml`` and a handler file): reading
  and loading them, the scaffold, watching them while serving, and ``ship``.
- ``telemetry/``: what every role reports beside its answers: traces
  (OpenTelemetry, when configured), the JSON log format, and the embedded gateway's
  relay of its local workers' metrics. Imports only the top level.
- ``run/``: the composition root: the command line, ``main``, the supervisor of
  local workers and their Unix sockets, live reloads, and the container probe.
- At the top: ``config.py`` (Settings and the function registry, functions.yaml),
  ``admission.py`` (the bounded queue the gateway and workers both use),
  ``memory.py`` (giving memory back after large calls), and ``testing.py``, the
  public testing API (start a served instance from a test).

Imports run one way: ``run`` may import every role; ``http``, ``oip``, ``gateway``
and ``worker`` import ``rpc``, ``telemetry`` and the top-level modules, not each
other, with two exceptions that follow the data: ``oip`` imports the gateway it
adapts, and ``http`` imports ``oip.codec``, the Open Inference model mapping its
``/v2`` shares with the gRPC adapter; ``worker`` loads folder functions through
``repository``. ``rpc`` and ``telemetry`` import only the top level, ``repository``
the top level and ``rpc``; nothing imports ``run``; nothing here is imported by
``handlers/``.
"""
