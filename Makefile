# The two README commands, each doing its own set-up on a fresh machine:
#   make figures   run every notebook on profile quick (Fashion-MNIST) and write figures/
#   make test      run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The stamp names the extras installed: a .venv made before an extra was added is brought up to date.
STAMP  := $(VENV)/.bdlib-installed-dev-dask-classroom
PROFILE ?= quick

.PHONY: figures test lint bench setup data clean-cache book browser

figures: setup
	$(BIN)/python -m bdlib run --profile $(PROFILE)

# Two pytest workers, one thread each (pytest-xdist, a whole test file per worker): the smoke run
# of the notebooks and the paper-path run go side by side on a 2-core machine, the other files
# beside them, longest first (tests/conftest.py); one OpenMP thread per worker, passive, so the
# two never spin against each other.
test: setup lint browser
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

# ruff (configured in pyproject.toml) over bdlib/, tests/, benchmarks/ and the notebooks.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmarks of benchmarks/README.md (cache.py runs every notebook twice: ~20 min on quick).
bench: setup
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/none_scoring.py
	$(BIN)/python benchmarks/gpu_estimate.py
	$(BIN)/python benchmarks/cache.py --profile $(PROFILE)

setup: $(STAMP) data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,dask,classroom]'
	touch $@

# Fashion-MNIST: found under $$BDLIB_DATA or from Debian's dataset-fashion-mnist; installed with
# apt-get where apt exists and the data is missing (bdlib falls back to torchvision's download).
data: $(STAMP)
	@$(BIN)/python -c "import bdlib.data as d; d.load('fmnist', download=False)" 2>/dev/null \
	  || { if command -v apt-get >/dev/null; then \
	         SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	         $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	       else echo "apt-get not found: bdlib will try torchvision's download of Fashion-MNIST"; fi; }

# The companion as a book: a static site of the executed notebooks in executed/ (written by make
# figures), docs/methods.md and the README's story, built by Sphinx + myst-nb into build/book/html.
BOOK_STAMP := $(VENV)/.bdlib-installed-book

book: $(BOOK_STAMP)
	$(BIN)/python book/build.py

$(BOOK_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[book]'
	touch $@

# tests/test_book.py opens the book in Debian's chromium (driven by Playwright, which downloads no
# browser): installed with apt-get where it is missing; without it the target fails, saying why.
browser: $(BOOK_STAMP)
	@command -v chromium >/dev/null \
	  || { if command -v apt-get >/dev/null; then \
	         SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	         $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	       fi; \
	       command -v chromium >/dev/null || { echo "make browser: Debian's chromium is not installed and apt-get could not install it: tests/test_book.py needs it (apt-get install chromium)" >&2; exit 1; }; }

clean-cache:
	rm -rf .bdlib-cache build
