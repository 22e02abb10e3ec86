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
MODEL     := models/mobilenet_ssd_v2_coco_quant_postprocess.tflite

.PHONY: setup run test bench proto model browser clean help

help:
	@echo "make run     serve on 127.0.0.1:50051 (gateway and workers), web page on http://127.0.0.1:8080/"
	@echo "make test    run the test suite"
	@echo "make bench   measure, print a table, save it under bench/results/"
	@echo "make setup   virtual environment, generated code and model only"
	@echo "make clean   remove everything set-up made"

setup: $(INSTALLED) proto model

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

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

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) models build *.egg-info .pytest_cache .hypothesis
	find protos -name '*_pb2*.py*' -delete
	find . -name __pycache__ -prune -exec rm -rf {} +
