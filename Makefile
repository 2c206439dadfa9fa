# Set-up and everyday commands. Both `run` and `test` install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: install run test test-sqlite test-postgres clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ftserve serve --host $(HOST) --port $(PORT)

# The whole suite, on SQLite and then on PostgreSQL.
test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	$(BIN)/python -m pytest -q

test-postgres: $(STAMP)
	FTSERVE_TEST_DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .ftserve
