# The two commands of the README. Both create .venv themselves (scripts/bootstrap.sh).
PY := .venv/bin/python
CONFIG ?= configs/voc.py
PYTEST_ARGS ?=

.PHONY: demo test test-fast venv

venv:
	@scripts/bootstrap.sh requirements.txt

# Main job. Until the training loop exists: the model smoke check (parameter/FLOP summary and one forward pass).
demo:
	@scripts/bootstrap.sh requirements.txt
	$(PY) summary.py --config $(CONFIG)

test:
	@scripts/bootstrap.sh requirements-dev.txt
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow.
test-fast:
	@scripts/bootstrap.sh requirements-dev.txt
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)
