"""Running dcf: the composition root.

``cli`` is the command line and the Settings it gives; ``main`` builds and starts
each role (embedded default, gateway, worker, http); ``supervisor`` starts and
restarts the local workers; ``probe`` is the container health check
(``python -m server.probe``). May import every role; no role imports it.
"""
