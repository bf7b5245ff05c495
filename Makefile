# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# exact pin: this version resolves to the local CPU wheel, a looser one pulls CUDA builds
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lamstream demo

lint: $(STAMP)
	$(BIN)/ruff check stream model tests
	$(BIN)/mypy stream model

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .lamstream .mypy_cache .ruff_cache .pytest_cache *.egg-info
