# The README's commands. `make test` installs everything it needs itself.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test test-fast lint format clean

setup:
	bash scripts/setup.sh

# The main job: the CPU debug run end to end (tiny model, synthetic clips, embedded Redis).
run: setup
	.venv/bin/reelrl train configs/debug_cpu.yaml $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not integration and not e2e" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_layers.py

format: setup
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv runs .pytest_cache .ruff_cache
