# The two commands of the README. Both create .venv themselves (scripts/bootstrap.sh).
PY := .venv/bin/python
CONFIG ?= configs/synthetic.py
WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist): most of the suite's time is XLA compilation, which runs on one core.
TEST_WORKERS ?= 2

.PHONY: demo lint test test-fast venv

venv:
	@scripts/bootstrap.sh requirements.txt

# Main job: train on the built-in synthetic set (about 10 minutes on 2 CPU cores), then evaluate the checkpoint.
# Rerunning resumes from the newest checkpoint in $(WORKDIR).
demo:
	@scripts/bootstrap.sh requirements.txt
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR)
	$(PY) eval.py --config $(CONFIG) --workdir $(WORKDIR)

test:
	@scripts/bootstrap.sh requirements-dev.txt
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint:
	@scripts/bootstrap.sh requirements-dev.txt
	$(PY) -m ruff check .

# Everything but the tests marked slow.
test-fast:
	@scripts/bootstrap.sh requirements-dev.txt
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)
