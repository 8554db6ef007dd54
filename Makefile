# Two commands matter: `make demo` and `make test`. Both create .venv and install
# everything the project needs from its own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[segment,report,curate,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m drawpipe.demo

test: $(STAMP) chromium
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

bench: $(STAMP)
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
