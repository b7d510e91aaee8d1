# pgsidecar developer and CI entry points. `make help` lists the targets.
#
# Every recipe runs in bash with -euo pipefail, so any failing command fails
# the make.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:
MAKEFLAGS += --no-builtin-rules

GO          ?= go
BIN         := bin/pgsidecar
# Extra flags for the sidecar in `make run`, e.g. ARGS='--listen 127.0.0.1:7432'.
ARGS        ?=
# `make run UPSTREAM=postgres://user:pass@host:5432/db` proxies to that server;
# without it, `make run` starts a throwaway PostgreSQL (internal/devenv).
UPSTREAM    ?=
# How long each Fuzz function runs in `make fuzz`, and in the short pass of `make test`.
FUZZTIME    ?= 10s
TESTFUZZTIME ?= 5s
TESTTIMEOUT ?= 25m
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: help build run deps test check fmt-check vet tidy-check test-race test-short fuzz bench bench-cache lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

build: ## build bin/pgsidecar
	$(GO) build -o $(BIN) ./cmd/pgsidecar

run: build ## run the sidecar: against $(UPSTREAM), or against a throwaway PostgreSQL
ifneq ($(strip $(UPSTREAM)),)
	./$(BIN) --upstream '$(UPSTREAM)' $(ARGS)
else
	$(GO) run ./internal/devenv -- ./$(BIN) $(ARGS)
endif

deps: ## install PostgreSQL 15, Redis and PgBouncer when missing (apt, as root)
	bash scripts/install-deps.sh

test: deps ## the CI gate: deps, gofmt, vet, go mod tidy, race tests, a short fuzz pass
	$(MAKE) --no-print-directory check
	$(MAKE) --no-print-directory test-race
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(TESTFUZZTIME)

check: fmt-check vet tidy-check ## gofmt, go vet and go mod tidy gates

fmt-check:
	@out="$$(gofmt -l .)"; \
	if [[ -n "$$out" ]]; then echo "gofmt -l: these files need gofmt -w:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

tidy-check:
	@if ! $(GO) mod tidy -diff; then \
		echo "go mod tidy would change go.mod/go.sum (diff above): run go mod tidy"; exit 1; \
	fi

test-race: ## all tests with the race detector, then the integration suite again in transaction mode
	$(GO) test -race -count=1 -timeout $(TESTTIMEOUT) ./...
	PGSIDECAR_TEST_POOL_MODE=transaction $(GO) test -race -count=1 -timeout $(TESTTIMEOUT) ./test/integration/

test-short: ## tests that need no servers
	$(GO) test -short ./...

# go test -fuzz takes one package and one target at a time, so each Fuzz
# function found in a *_test.go file gets its own run. Go before 1.27 can
# end a -fuzztime run with a bare "context deadline exceeded" when a busy
# worker misses the stop (golang/go#75804): with no failing input written,
# that run is tried once more; a real finding always writes one.
fuzz: ## run every Fuzz function for $(FUZZTIME)
	@found=0; log="$$(mktemp)"; trap 'rm -f "$$log"' EXIT; \
	while IFS=: read -r file fn; do \
		found=1; pkg="./$$(dirname "$$file")"; \
		for attempt in 1 2; do \
			echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
			if $(GO) test -run='^$$' -fuzz="^$$fn\$$" -fuzztime=$(FUZZTIME) "$$pkg" 2>&1 | tee "$$log"; then break; fi; \
			if [[ $$attempt == 1 ]] && grep -q 'context deadline exceeded' "$$log" && ! grep -q 'Failing input written' "$$log"; then \
				echo "fuzz: $$fn stopped on Go's -fuzztime race (golang/go#75804), not on a finding; running it again"; \
				continue; \
			fi; \
			exit 1; \
		done; \
	done < <(grep -rHo --include='*_test.go' --exclude-dir=testdata --exclude-dir=.git \
		-E '^func Fuzz[A-Za-z0-9_]*\(' . | sed -E 's|^\./||; s|:func (Fuzz[A-Za-z0-9_]*)\($$|:\1|' | sort); \
	if [[ $$found == 0 ]]; then echo "fuzz: no Fuzz functions found"; fi

# BENCHFLAGS go to test/bench, e.g. BENCHFLAGS='-duration 5s -clients 32,256'.
BENCHFLAGS ?=
bench: build deps ## Go hot-path benchmarks, then pgbench: pooling vs PgBouncer, result cache vs pgpool-II
	$(GO) test -run='^$$' -bench=. -benchmem ./proxy/ ./internal/...
	$(GO) run ./test/bench -sidecar ./$(BIN) $(BENCHFLAGS)

bench-cache: build deps ## pgbench result-cache workload only: PostgreSQL vs pgsidecar's cache tiers vs pgpool-II
	$(GO) run ./test/bench -sidecar ./$(BIN) -workload cache $(BENCHFLAGS)

lint: fmt-check vet ## gofmt, go vet and staticcheck
	$(STATICCHECK) ./...

clean: ## remove build output
	rm -rf bin coverage.out coverage.html
