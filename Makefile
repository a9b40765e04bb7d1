# vggc — make targets. `make demo` and `make test` install what they need into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
VGGC   := $(BIN)/vggc

# Default inputs: VGGC_WEIGHTS / VGGC_DATA when set, else the shared reference model and data.
WEIGHTS ?= $(or $(VGGC_WEIGHTS),../shared/models/vgg16_bn_cifar10.pt)
DATA    ?= $(or $(VGGC_DATA),../shared/data/cifar10-jpeg)
OUT     ?= artifacts

.PHONY: install install-serve test test-fast demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	touch $@

# The serving tests (tests/test_serve.py, marker `serve`) start the tritonserver of the serve extra; install-serve
# brings the extra and, as root, the system libpython3.X it needs (else those tests skip with the reason).
install-serve: $(VENV)/.installed-serve

$(VENV)/.installed-serve: $(VENV)/.installed scripts/install_serve.sh
	@bash scripts/install_serve.sh $(BIN)/python $@

test: install install-serve
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	@bash scripts/demo.sh "$(WEIGHTS)" "$(DATA)" "$(OUT)"

bench: install
	@bash scripts/bench.sh "$(WEIGHTS)" "$(DATA)" "$(OUT)"

lint: install
	$(BIN)/ruff check vggc tests

clean:
	rm -rf $(OUT) .pytest_cache
