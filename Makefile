# mcpx: `make run` serves, `make test` tests; each does all of its own set-up on a fresh Debian host.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
IMAGE ?= mcpx-sandbox:latest
BASE ?=
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=
OVERLAY ?= dev
RUNTIME ?= runsc
# Third-party MCP servers the tests talk to, each in its own environment.
SERVERS := .servers
TIME_SERVER := $(SERVERS)/time/bin/mcp-server-time
EVERYTHING_SERVER := $(SERVERS)/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js
# The real servers whose tools the search benchmark's labelled queries are about.
GIT_SERVER := $(SERVERS)/git/bin/mcp-server-git
NPM_SERVERS := filesystem@2026.8.31 memory@2026.8.31 postgres@0.6.2
NPM_SERVER_FILES := $(foreach s,$(NPM_SERVERS),$(SERVERS)/npm/node_modules/@modelcontextprotocol/server-$(firstword $(subst @, ,$(s)))/package.json)
# The TypeScript compiler, to parse and type-check the generated .ts stubs in the tests.
TSC := $(SERVERS)/npm/node_modules/typescript/lib/typescript.js
TYPESCRIPT ?= 1

.PHONY: help setup venv host image test-servers run test test-pure test-security bench bench-tokens bench-load bench-search lint k8s-validate deploy clean

# The make variables a `## comment` may name, shown with their values.
HELP_VARIABLES := HOST PORT IMAGE OVERLAY RUNTIME

help: ## Show the targets
	@awk 'BEGIN {FS = ":.*## "; split("$(foreach v,$(HELP_VARIABLES),$(v)=$($(v)))", pairs, " ")} \
	/^[A-Za-z0-9_-]+:.*## / { text = $$2; for (i in pairs) { split(pairs[i], kv, "="); gsub("\\$$\\(" kv[1] "\\)", kv[2], text) } \
	printf "  \033[1m%-13s\033[0m %s\n", $$1, text }' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with the project and its dev tools

host: ## Install and start Docker with gVisor (runsc) when missing
	bash sandbox-image/host-setup.sh

image: host ## Build the sandbox image when missing or stale (BASE=... registry base; TYPESCRIPT=0 Python only)
	IMAGE=$(IMAGE) BASE=$(BASE) TYPESCRIPT=$(TYPESCRIPT) bash sandbox-image/build.sh --if-missing

setup: venv image ## Everything `run` and `test` need

$(TIME_SERVER):
	$(PYTHON) -m venv $(SERVERS)/time
	$(SERVERS)/time/bin/pip install --quiet mcp-server-time==2026.10.19

$(EVERYTHING_SERVER):
	command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	mkdir -p $(SERVERS)/npm
	npm install --prefix $(SERVERS)/npm --no-fund --no-audit --silent @modelcontextprotocol/server-everything@2026.8.31

$(GIT_SERVER):
	$(PYTHON) -m venv $(SERVERS)/git
	$(SERVERS)/git/bin/pip install --quiet mcp-server-git==2026.10.19

$(NPM_SERVER_FILES) &: $(EVERYTHING_SERVER)
	npm install --prefix $(SERVERS)/npm --no-fund --no-audit --silent $(addprefix @modelcontextprotocol/server-,$(NPM_SERVERS))

$(TSC): $(EVERYTHING_SERVER)
	npm install --prefix $(SERVERS)/npm --no-fund --no-audit --silent typescript@5.9.3

test-servers: $(TIME_SERVER) $(EVERYTHING_SERVER) $(TSC) $(GIT_SERVER) $(NPM_SERVER_FILES) ## Install the third-party MCP servers (and tsc) the tests use

run: setup ## Serve the API on $(HOST):$(PORT)
	@echo "mcpx: try  curl -s -X POST http://$(HOST):$(PORT)/v1/sessions   then"
	@echo "       curl -s -X POST http://$(HOST):$(PORT)/v1/sessions/ID/executions -H 'content-type: application/json' -d '{\"code\": \"print(6*7)\"}'"
	MCPX_IMAGE=$(IMAGE) $(BIN)/mcpx serve --host $(HOST) --port $(PORT)

test: setup test-servers ## Run the test suite against the real engine, image and MCP servers
	MCPX_TEST_IMAGE=$(IMAGE) $(BIN)/pytest $(PYTEST_ARGS)

test-pure: venv ## Run the pure logic alone, with no Docker engine reachable (holds the docker marker to its word)
	DOCKER_HOST=unix:///nonexistent $(BIN)/pytest -m "not docker" $(PYTEST_ARGS)

test-security: setup test-servers ## Run only the adversarial suite (tests/security), under runsc and runc
	MCPX_TEST_IMAGE=$(IMAGE) $(BIN)/pytest tests/security $(PYTEST_ARGS)

bench: setup test-servers ## Latency benchmarks beside their baselines: tables on stdout, JSON in .bench/
	MCPX_IMAGE=$(IMAGE) $(BIN)/python tests/bench/sessions.py --out .bench/sessions.json
	MCPX_IMAGE=$(IMAGE) $(BIN)/python tests/bench/tools.py --out .bench/tools.json

bench-tokens: setup test-servers ## Token economy: direct tool calling against mcpx, real scenarios, JSON in .bench/
	MCPX_IMAGE=$(IMAGE) $(BIN)/python tests/bench/tokens.py --out .bench/tokens.json

bench-load: setup ## Load: 50 sessions x 20 tool-calling executions at once (RUNTIME=runc for runc), JSON in .bench/
	MCPX_IMAGE=$(IMAGE) $(BIN)/python tests/bench/load.py --runtime $(RUNTIME) --out .bench/load.json

bench-search: venv ## Tool search: recall@1, recall@5 and MRR on labelled requests over real servers' tools (offline)
	$(BIN)/python tests/bench/search.py

lint: venv ## ruff and strict mypy
	$(BIN)/ruff check controller sandbox-image/mcpx_runtime tests k8s
	$(BIN)/ruff format --check controller sandbox-image/mcpx_runtime tests k8s
	$(BIN)/mypy

k8s-validate: venv ## Render k8s/ with kustomize and validate it offline (schemas and our rules)
	$(BIN)/python k8s/validate.py

deploy: k8s-validate ## Apply k8s/overlays/$(OVERLAY) to the current kubectl context
	$(BIN)/kubectl apply -k k8s/overlays/$(OVERLAY)

clean: ## Remove the venv, caches and this host's mcpx containers
	-docker ps -aq --filter label=mcpx.controller | xargs -r docker rm -f
	rm -rf $(VENV) $(SERVERS) .bench .pytest_cache .mypy_cache .ruff_cache
