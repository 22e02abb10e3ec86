"""Fast tests: in one process, no server subprocess, no model; `make test-fast` runs these."""
