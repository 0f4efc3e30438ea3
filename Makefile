# Set-up and everyday commands. On a fresh machine only `python3` (with its venv module) is needed:
#   make demo   # creates .venv, installs, runs the tiny CPU demo
#   make test   # creates .venv, installs, runs every test (the CI suite; .ci/run calls it)
# A CUDA machine installs its own torch first (see README.md); then `make install` keeps it.

VENV ?= .venv
PYTHON ?= python3
# torch is installed on its own, before the project, so that a CPU-only machine can point it at the
# PyTorch CPU index, e.g. make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
DEMO_CMD ?= patch-align demo

VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
INSTALL_STAMP := $(VENV)/.patch-align-installed

.PHONY: venv install system-deps deepspeed-cpu-op test test-fast lint demo clean distclean

venv: $(VENV_PYTHON)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

install: $(INSTALL_STAMP)

# Re-runs only when pyproject.toml changes. pycocoevalcap (the eval extra) is optional: it is only
# needed for caption scores, so a failure to install it is reported and does not stop the set-up.
$(INSTALL_STAMP): pyproject.toml | $(VENV_PYTHON)
	$(VENV_PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PIP) install -e ".[dev,train,app]"
	$(PIP) install -e ".[eval]" || { [ -z "$$CI" ] && echo "WARNING: the eval extra (pycocoevalcap) did not" \
		"install; caption metrics (CIDEr/BLEU) are unavailable, everything else works."; }
	touch $(INSTALL_STAMP)

# Java runs pycocoevalcap's METEOR/SPICE scorers, Chromium the app's browser test. CI (CI=true, root,
# Debian) installs them, since a test skipped for a missing dependency fails there (tests/conftest.py);
# elsewhere only a note is printed.
system-deps:
	@command -v java >/dev/null 2>&1 || { \
		if [ -n "$$CI" ]; then apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; \
		else echo "note: no java: the METEOR/SPICE caption tests skip (apt-get install default-jre-headless)"; fi; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
		if [ -n "$$CI" ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "note: no chromium: the app's browser test skips (apt-get install chromium chromium-driver)"; fi; }

# DeepSpeed's CPU shared-memory op, compiled once into the folder tests/conftest.py gives the tests,
# with the venv's ninja first on PATH as in every test process (a ninja of another version discards
# the build log and rebuilds everything), so that no test process compiles it mid-run. A test killed
# while compiling would leave the folder's `lock`, on which every later DeepSpeed process waits for
# good; a lock found here is such a leftover (nothing else builds into this folder).
DS_EXTENSIONS := $(abspath $(VENV))/torch_extensions
deepspeed-cpu-op: $(INSTALL_STAMP)
	rm -f "$(DS_EXTENSIONS)/deepspeed_shm_comm/lock"
	PATH="$(abspath $(VENV))/bin:$$PATH" TORCH_EXTENSIONS_DIR="$(DS_EXTENSIONS)" $(VENV_PYTHON) -c \
		"from deepspeed.comm.torch import build_shm_op; build_shm_op()"

# The CI suite: every test, slow ones included (README gives its measured time on 2 cores).
test: $(INSTALL_STAMP) system-deps deepspeed-cpu-op
	$(VENV_PYTHON) -m pytest -q

# The quick loop while developing: tests not marked slow.
test-fast: $(INSTALL_STAMP)
	$(VENV_PYTHON) -m pytest -m "not slow" -q

lint: $(INSTALL_STAMP)
	$(VENV)/bin/ruff check .

demo: $(INSTALL_STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" $(DEMO_CMD)

clean:
	rm -rf build dist .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -f $(INSTALL_STAMP)

distclean: clean
	rm -rf $(VENV)
