# vggc — make targets. `make demo` and `make test` install what they need into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
VGGC   := $(BIN)/vggc

# Default inputs: VGGC_WEIGHTS / VGGC_DATA when set, else the shared reference model and data.
WEIGHTS ?= $(or $(VGGC_WEIGHTS),../shared/models/vgg16_bn_cifar10.pt)
DATA    ?= $(or $(VGGC_DATA),../shared/data/cifar10-jpeg)
OUT     ?= artifacts

.PHONY: install test test-fast demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	touch $@

test: install
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
