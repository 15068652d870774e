# Every target creates .venv first, with the exact versions of constraints.txt inside pyproject.toml's
# ranges, so a fresh machine needs nothing else; a change to either file reinstalls.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK_VENV := build/lock-venv

.PHONY: demo test test-all bench lint clean cleanup messages screenshots constraints

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m lab.i18n
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lab demo

# Without root, lab.userns runs pytest as root of namespaces of its own, so the privileged tests run
# too (as root it simply runs pytest). Four workers on two cores: most tests wait on links, timeouts
# and child processes rather than compute (the suite took 4m53 with two workers, 3m16 with four).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m lab.userns -- $(BIN)/pytest -n 4 -m "not slow" --hypothesis-profile=ci

test-all: $(STAMP)
	$(BIN)/python -m lab.userns -- $(BIN)/pytest -n 4 --hypothesis-profile=ci

# The benchmarks, then the table of the lab against its anchors (tests/benchmarks/test_anchors.py):
# sockperf, iperf3 and socat, installed here with apt-get when root (tools/bench_tools.sh says why not
# otherwise; their rows then say "not measured"). Without root, lab.userns gives the link benchmarks
# namespaces of their own, as for `make test`. The table is printed even when a benchmark failed.
# BENCH_ARGS passes pytest options, e.g. `make bench BENCH_ARGS='-k anchors'` for the table alone.
BENCH_TOOLS := sockperf iperf3 socat
BENCH_DIR := reports/benchmarks

bench: $(STAMP)
	bash tools/bench_tools.sh $(BENCH_TOOLS)
	mkdir -p $(BENCH_DIR)
	rm -f $(BENCH_DIR)/anchors.json $(BENCH_DIR)/anchors.md
	WIRELAB_ANCHORS_JSON=$(BENCH_DIR)/anchors.json $(BIN)/python -m lab.userns -- \
		$(BIN)/pytest tests/benchmarks -p no:xdist --benchmark-only \
		--benchmark-json=$(BENCH_DIR)/benchmarks.json --benchmark-group-by=group \
		--benchmark-columns=min,median,mean,max,rounds $(BENCH_ARGS); status=$$?; \
	uptime; $(BIN)/python tools/bench_table.py $(BENCH_DIR)/anchors.json; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .

cleanup: $(STAMP)
	$(BIN)/lab cleanup

clean:
	rm -rf $(VENV) build *.egg-info

# Re-lock constraints.txt to the newest versions pyproject.toml's ranges allow (transitive ones too),
# resolved in a throwaway venv; the next `make` installs them into .venv. Then run `make test`.
constraints:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	{ sed -n '/^#/p' constraints.txt; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable --exclude pip; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)

# Re-extract the translatable messages (`_()`, `N_()`) into the catalogues; translate the new ones
# in lab/locale/pt/LC_MESSAGES/wirelab.po, then `make` compiles them.
messages: $(STAMP)
	$(BIN)/pybabel -q extract -F babel.cfg -k N_ -o lab/locale/wirelab.pot --no-location --sort-output \
		--project wirelab .
	$(BIN)/pybabel -q update -i lab/locale/wirelab.pot -d lab/locale -D wirelab --no-fuzzy-matching
	$(BIN)/python -m lab.i18n

# The README's and docs/classroom.md's pictures, from real runs (needs chromium).
screenshots: $(STAMP)
	bash tools/screenshots.sh
