# Every target creates .venv from the pinned dependencies first, so a fresh machine needs nothing else.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean cleanup messages screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m lab.i18n
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lab demo

# Without root, lab.userns runs pytest as root of namespaces of its own, so the privileged tests run
# too (as root it simply runs pytest).
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m lab.userns -- $(BIN)/pytest -n 2 -m "not slow" --hypothesis-profile=ci

test-all: $(STAMP)
	$(BIN)/python -m lab.userns -- $(BIN)/pytest -n 2 --hypothesis-profile=ci

bench: $(STAMP)
	mkdir -p reports/benchmarks
	$(BIN)/pytest tests/benchmarks -p no:xdist --benchmark-only \
		--benchmark-json=reports/benchmarks/benchmarks.json --benchmark-group-by=group \
		--benchmark-columns=min,median,mean,max,rounds

lint: $(STAMP)
	$(BIN)/ruff check .

cleanup: $(STAMP)
	$(BIN)/lab cleanup

clean:
	rm -rf $(VENV) build *.egg-info

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
