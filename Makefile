# The two commands of the README. Both create a project-local virtual environment (.venv) with
# Python 3.11 (or $(PYTHON)), install cxr_tf into it, then run.
#   make demo   - end-to-end demo on generated phantoms (about 8 minutes on 2 CPU cores)
#   make test   - style and import contracts (ruff, import-linter), then the test suite (CI)
PYTHON ?= python3.11
VENV ?= .venv
DEMO_DIR ?= demo_work
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): setup.py
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# Environments made before cxr_tf[cpu] meant `tensorflow`: tensorflow-cpu installs the same
	# module, and two copies of it must not be mixed.
	$(VENV)/bin/python -m pip uninstall --quiet --yes tensorflow-cpu 2>/dev/null || true
	# Exactly what `pip install 'cxr_tf[cpu,serving]'` gives, plus the test tools and tfds build.
	$(VENV)/bin/python -m pip install --quiet -e '.[cpu,serving,test,tfds]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cxr-demo --work_dir=$(DEMO_DIR)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) $(DEMO_DIR) *.egg-info
