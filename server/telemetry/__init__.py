"""What dcf tells operators about its calls, beside their answers.

- ``tracing``: OpenTelemetry traces of each call across the front, the gateway and
  the worker, when the standard ``OTEL_*`` variables ask for them (optional: the
  ``otel`` extra);
- ``logs``: the log lines' format, text (the default) or one JSON object a line;
- ``relay``: the embedded default's gateway serving its local workers' metrics on
  its own /metrics.

Every role imports it; it imports only the top level and the handlers' step API.
"""
