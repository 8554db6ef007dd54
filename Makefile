# Two commands matter: `make demo` and `make test`. Both create .venv and install
# what they need from the project's own files: `make demo` what the demo and the three
# scripts need (and the report, review page and export); `make test` adds the test tools
# (pytest, Playwright, datasets, pandas) and the optional transports. The energy extra's
# libraries install only where they apply (zeus-apple-silicon on Apple Silicon,
# nvidia-ml-py on Linux), so a Mac measures each image's energy out of the box.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_EXTRAS := segment,report,curate,energy,grpc
TEST_EXTRAS := $(DEMO_EXTRAS),test

# drawpipe needs Python 3.11 or newer. macOS's own python3 is 3.9, and pip given one
# that old backtracks through gigabytes of wheels before it says no: find a new enough
# interpreter on PATH (PYTHON=... names one), or stop at once with one line.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3
ifeq ($(origin PYTHON),undefined)
PYTHON_CHOICES := $(PYTHON_CANDIDATES)
else
PYTHON_CHOICES := $(PYTHON)
endif
GET_PYTHON := on a Mac: brew install python@3.12, or the installer from https://www.python.org/downloads/macos/, then run make again

.PHONY: demo test install bench clean chromium

$(PY):
	$(eval FOUND := $(shell $(SHELL) tools/find_python.sh $(PYTHON_CHOICES)))
	$(if $(filter found,$(firstword $(FOUND))),,$(error drawpipe needs Python 3.11 or newer; tried $(PYTHON_CHOICES) $(wordlist 2,99,$(FOUND)); $(GET_PYTHON)))
	$(word 2,$(FOUND)) -m venv $(VENV)

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(DEMO_EXTRAS)]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(TEST_EXTRAS)]'
	touch $@ $(VENV)/.installed-demo

install: $(VENV)/.installed-demo

# make demo DEMO_TRANSPORT=grpc: the same on the gRPC simulator (Draw Things' gRPC API).
DEMO_TRANSPORT ?= http

demo: $(VENV)/.installed-demo
	$(PY) -m drawpipe.demo --transport $(DEMO_TRANSPORT)

test: $(VENV)/.installed-test chromium
	$(PY) -m pytest -q

# The browser tests (the report's page, the review page) drive headless Chromium with
# Playwright, which cannot download a browser here: Debian's package where apt exists
# and none is installed; elsewhere those tests skip, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || ! command -v apt-get >/dev/null 2>&1 \
	  || { if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	       else sudo -n apt-get update -qq && sudo -n apt-get install -y -qq chromium >/dev/null; fi; } \
	  || echo "note: could not install chromium; the browser tests will skip"

bench: $(VENV)/.installed-test
	$(PY) bench/client_overhead.py
	$(PY) bench/scaling.py
	$(PY) bench/upscale.py
	$(PY) bench/segment.py
	$(PY) bench/report.py
	$(PY) bench/primitives.py
	$(PY) bench/energy.py
	$(PY) bench/curate.py
	$(PY) bench/grpc_transport.py
	$(PY) bench/publish.py
	$(PY) bench/status.py

clean:
	rm -rf $(VENV) demo
