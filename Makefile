# podgate: `make run` starts the service on the embedded defaults, `make test` runs everything.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit cluster openapi bench bench-smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,fast]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/podgate serve --demo

lint: $(STAMP)
	$(BIN)/ruff check service tests bench migrations
	$(BIN)/ruff format --check service tests bench migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint cluster
	$(BIN)/pytest -q

# kube-apiserver v1.20.2 + etcd for tests/cluster, built once into
# $${PODGATE_CACHE_DIR:-~/.cache/podgate}/kube-v1.20.2 (~3 min cold, instant after).
cluster:
	tests/cluster/build.sh >/dev/null

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

openapi: $(STAMP)
	$(BIN)/python -m service.api.openapi > openapi/openapi.json.tmp && mv openapi/openapi.json.tmp openapi/openapi.json

bench: $(STAMP) cluster
	$(BIN)/python -m bench

bench-smoke: $(STAMP) cluster
	$(BIN)/python -m bench --smoke --output bench/out/smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
