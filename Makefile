# Two commands matter: `make demo` and `make test`. Both create .venv and install
# everything the project needs from its own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[segment,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m drawpipe.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/client_overhead.py
	$(PY) bench/scaling.py
	$(PY) bench/upscale.py
	$(PY) bench/segment.py

clean:
	rm -rf $(VENV) demo
