# One command sets everything up and runs the app; one sets everything up and runs every test.
#   make run    -> venv + pinned deps + relpos, then `streamlit run app.py` on the default preset
#   make test   -> venv + pinned deps + relpos + Debian chromium (browser tests), then pytest
#   make lesson -> queue the demo set (configs/sweeps/lesson.yaml) into <runs root>/sweeps/lesson
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.relpos-installed

.PHONY: setup run test test-fast bench chromium clean lesson

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/streamlit run app.py --server.headless true

chromium:
	bash scripts/ensure_chromium.sh

test: setup chromium
	$(PY) -m pytest -q

# Everything but the slow end-to-end tests (training subprocesses, servers, the browser).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The demo set for a class, queued in the background (the same folder as the app's "Prepare a lesson"
# button; running it again only re-queues what is missing). RELPOS_RUNS_ROOT picks the runs root.
RUNS_ROOT ?= $(or $(RELPOS_RUNS_ROOT),checkpoints)
lesson: setup
	$(PY) -m relpos.experiments.sweep --spec configs/sweeps/lesson.yaml --runs-root $(RUNS_ROOT) \
		--sweep-dir $(RUNS_ROOT)/sweeps/lesson --no-wait

bench: setup
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache tests/artifacts
