"""``python -m server.probe``: the image's HEALTHCHECK, kept at this name for Dockerfiles
and Kubernetes probes that call it; the probe itself is ``server.run.probe``."""

from server.run.probe import main

if __name__ == "__main__":
    raise SystemExit(main())
