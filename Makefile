# dcf: every target does its own set-up. On a fresh machine `make run` serves and
# `make test` passes; both build the virtual environment, the generated code and
# the model first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python

PROTOS    := $(shell find protos -name '*.proto')
GENERATED := $(PROTOS:.proto=_pb2.py)
INSTALLED := $(VENV)/.installed
# Every package, pinned with its hashes: the runtime for the image, runtime and test
# extra for make and CI. `make lock` writes both from setup.cfg.
LOCK      := requirements.lock
TEST_LOCK := requirements-test.lock
MODEL     := models/mobilenet_ssd_v2_coco_quant_postprocess.tflite

.PHONY: setup run test test-fast lint bench bench-peers proto model browser lock clean help

help:
	@echo "make run     serve on 127.0.0.1:50051 (gateway and workers), web page on http://127.0.0.1:8080/"
	@echo "make test    run the test suite"
	@echo "make test-fast  the tests that start no service (in-process, no TensorFlow): seconds"
	@echo "make lint    ruff (rules and format) and mypy, as CI runs them"
	@echo "make bench   measure, print a table, save it under bench/results/"
	@echo "make bench-peers  dcf beside MLServer (installed under build/), saved likewise;"
	@echo "             TRITON=1: Triton (PyTriton) too"
	@echo "make setup   virtual environment, generated code and model only"
	@echo "make lock    setup.cfg into the lock files (LOCK_ARGS=--upgrade: to the newest allowed)"
	@echo "make clean   remove everything set-up made"

setup: $(INSTALLED) proto model

$(INSTALLED): setup.cfg pyproject.toml $(LOCK) $(TEST_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(TEST_LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# pip-tools in a venv of its own (under build/, which make clean removes), so that it
# never changes the project's. The lock is resolved against the package index alone:
# machine-wide pip settings (extra indexes, find-links) are left out, so every
# machine writes the same file. It keeps the pins still allowed; LOCK_ARGS=--upgrade
# moves everything to the newest release setup.cfg allows. It takes minutes (tensorflow).
LOCK_TOOLS  := build/lock-tools
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
	$(LOCK_TOOLS)/bin/pip-compile --quiet --no-config --allow-unsafe --generate-hashes \
	--strip-extras --no-emit-index-url --no-emit-find-links $(LOCK_ARGS)

lock:
	test -x $(LOCK_TOOLS)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_TOOLS) \
	  && $(LOCK_TOOLS)/bin/pip install --quiet 'pip-tools>=7.4,<8'; }
	$(PIP_COMPILE) --extra test --output-file $(TEST_LOCK) setup.cfg
	$(PIP_COMPILE) --extra otel --constraint $(TEST_LOCK) --output-file $(LOCK) setup.cfg

proto: $(GENERATED)

%_pb2.py: %.proto $(INSTALLED)
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $<

model: $(MODEL)

$(MODEL): | $(INSTALLED)
	$(PY) -m handlers.model_fetch

# Debian's chromium for the browser tests (Playwright drives it; it never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: setup
	$(PY) -m server

test: setup browser
	$(PY) -m pytest

# The fast tier: tests/unit/ alone, in one process with no service started (no browser
# needed); every other test is marked `service` by tests/conftest.py.
test-fast: setup
	$(PY) -m pytest -m "not service"

# The lint and type gate (settings in pyproject.toml). All three run, so that one pass
# shows every finding; the target fails if any of them does. `ruff check --fix .` and
# `ruff format .` repair most of what the first two find.
lint: setup
	status=0; \
	$(BIN)/ruff check --output-format concise . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy || status=1; \
	exit $$status

bench: setup
	$(PY) -m bench

# MLServer 1.7 for `make bench-peers`, in a venv of its own under build/ (make clean
# removes it), with our pins (from the lock) of the packages both sides run: the same
# TensorFlow, OpenCV, NumPy, Pillow, gRPC and protobuf. Reinstalled only when the lock
# changes. TRITON=1 adds Triton through PyTriton, in another venv: PyTriton needs NumPy 1,
# so that one has NumPy 1.26 and OpenCV 4.11 beside our TensorFlow, Pillow, gRPC, protobuf.
PEERS_VENV   := build/peers-venv
TRITON_VENV  := build/pytriton-venv
PEERS_PINS   := $(shell grep -hoE '^(tensorflow|opencv-python-headless|numpy|pillow|grpcio|protobuf)==[^ ]+' $(LOCK))
TRITON_PINS  := $(shell grep -hoE '^(tensorflow|pillow|grpcio|protobuf)==[^ ]+' $(LOCK))
TRITON_ARGS  := --triton 1,2 --triton 2,1

bench-peers: setup $(PEERS_VENV)/.installed $(if $(TRITON),$(TRITON_VENV)/.installed)
	$(PY) -m bench.peers $(if $(TRITON),$(TRITON_ARGS))

$(PEERS_VENV)/.installed: $(LOCK)
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/pip install --quiet 'mlserver==1.7.*' 'uvloop<0.22' $(PEERS_PINS)
	touch $@

$(TRITON_VENV)/.installed: $(LOCK)
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet 'nvidia-pytriton==0.7.*' 'numpy<2' \
	  'opencv-python-headless<4.12' $(TRITON_PINS)
	touch $@

clean:
	rm -rf $(VENV) models build *.egg-info .pytest_cache .hypothesis
	find protos -name '*_pb2*.py*' -delete
	find . -name __pycache__ -prune -exec rm -rf {} +
