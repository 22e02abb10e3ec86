"""``make bench-peers``: dcf beside MLServer (and PyTriton's Triton), one server up at a time.

Each peer runs in a virtual environment of its own under build/ (``make
bench-peers`` builds it), with runtimes from this package that do ssd's per-call
work through bench/bare.py: decode, resize to 300x300, invoke, the same JSON.
The measuring side (``python -m bench.peers``) runs in the project's environment
and talks to every server with the same client code.
"""
