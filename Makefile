# The README's two commands are `make run` and `make test`; both set up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: setup run test test-fast bench lint clean

setup: $(STAMP)

# Re-install only when the pins change: a second `make setup` takes a second.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	# Compile UMAP's numba kernels once into the venv's caches (as the Dockerfile does):
	# otherwise every process that draws a fleet map first compiles them itself (~30 s each).
	$(BIN)/python -c "from hdap_engine.fleet.embedding import warm_up; warm_up()"
	touch $(STAMP)

run: setup
	$(BIN)/hdap app --port $(PORT)

# Three pytest workers, a test file each at a time (module fixtures are built once): on a
# 2-core machine most tests wait on subprocesses, servers and browsers, so three at once keep
# both cores busy (measured: two workers used 1.3 cores).
TEST_WORKERS ?= 3

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow and not browser"

bench: setup
	$(BIN)/hdap bench-macs

lint: setup
	$(BIN)/ruff check hdap_engine app tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
