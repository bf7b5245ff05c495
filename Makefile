# The two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint docs install clean browser-deps soak faults

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# exact pin: this version resolves to the local CPU wheel, a looser one pulls CUDA builds
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/lamstream demo --hold 30

lint: $(STAMP)
	$(BIN)/ruff check stream model tests
	$(BIN)/mypy stream model

# The generated references docs/settings.md and docs/cli.md (a unit test fails when they are stale)
docs: $(STAMP)
	$(BIN)/python -m stream.cli.refdocs

# The dashboard's browser test drives Debian's Chromium: installed here where apt-get can (CI
# runs as root); elsewhere that test skips and says why.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "browser-deps: apt-get could not install chromium; the browser test will skip"; \
	else echo "browser-deps: no /usr/bin/chromium and no root apt-get; the browser test will skip"; fi

# Three processes, one test file each at a time (--dist loadfile: a file's module fixtures stay in
# one process; each process starts its own session broker). The integration tests mostly wait on
# the broker and group rebalances (load average < 1 serially), so on a 2-core machine three
# processes took the run from 13.5 min (814 s serial) to 4.9 min (295 s), same 761 passed.
test: lint browser-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile

# Long fault runs, by hand (pyproject's addopts deselect the `faults` marker everywhere else):
# a broker frozen for 30 s mid-stream, past the group session timeout
faults: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m faults

# Long runs, by hand (not in `make test`): a 20-minute soak at 1,000 events/s.
soak: $(STAMP)
	$(BIN)/lamstream bench soak --minutes 20 --rate 1000 --json

clean:
	rm -rf $(VENV) .lamstream .mypy_cache .ruff_cache .pytest_cache *.egg-info
