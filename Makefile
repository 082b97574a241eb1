# Two commands set up and run everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
# Debian packages used by tests and examples: headless Chromium (report rendering test), PostgreSQL
# (distributed Optuna workers test) and the Fashion-MNIST data set. Installed when we are root with apt.
SYSDEPS := chromium postgresql dataset-fashion-mnist

.PHONY: demo test install sysdeps clean bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[dev,nlp]"
	touch $(STAMP)

install: $(STAMP)

sysdeps:
	@missing=""; for p in $(SYSDEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	      || echo "warning: could not install$$missing; tests that need them will be skipped"; \
	  else echo "note: Debian packages$$missing missing (not root); tests that need them will be skipped"; fi; \
	fi

demo: install
	OMP_NUM_THREADS=1 $(BIN)/mpsearch optimize digits-cnn --run-dir runs/demo

test: install sysdeps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
