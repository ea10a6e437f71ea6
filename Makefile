# poprelay — see README.md.
GO      ?= go
BIN     := bin
CMDS    := checkpassword-wrap relayctl cdbbuild
FUZZTIME ?= 1m
# make test runs every fuzz target for this many inputs (make fuzz-short):
# a count, not a time. With a time, Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" at the deadline when a
# busy machine starves its workers (golang/go#75804, fixed in Go 1.27): a
# test that fails by chance. A count has no deadline to race.
FUZZSHORT ?= 10000x

.PHONY: all build bench-e2e bench-scale fuzz-short stress soak check deb deps test unit e2e vet fuzz bench demo clean

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ $(addprefix ./,$(CMDS))

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./internal/... $(addprefix ./,$(CMDS))

e2e: build
	POPRELAY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./t/...

test: vet unit e2e fuzz-short

# Every fuzz target for FUZZSHORT each; a crasher fails and is kept in the
# package's testdata/fuzz, where it stays a regression test.
fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZSHORT)

# The long reliability and security suite (t/robust_*, t/security_test.go)
# at full size: 1000 torn-read rebuilds, hundreds of kill -9s, a bigger
# storm. The figures are the log lines kept below; the whole log is in
# $(BIN)/stress.log.
stress: build
	@POPRELAY_STRESS=1 POPRELAY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 60m -v \
	  -run '^Test(Robust|Security)' ./t/ >$(BIN)/stress.log 2>&1; st=$$?; \
	  grep -E '^(--- |ok|FAIL|panic)|^    (robust|security)_[a-z_]*test.go:' $(BIN)/stress.log; exit $$st

# The unit tests (-race) and the end-to-end tests SOAK times (default 10)
# with every CPU kept busy by a load generator, stopping at the first
# failure: a test that assumes how fast the machine is fails here.
# SOAKSKIP=REGEXP leaves tests out (go test -skip). See scripts/soak.
SOAK ?= 10
soak: build
	@SOAK=$(SOAK) SOAKSKIP='$(SOAKSKIP)' GO=$(GO) sh scripts/soak

# The README's test command: install what the tests need, then test.
check: deps
	$(GO) mod download
	$(MAKE) test

deps:
	@sh scripts/deps

fuzz:
	@for p in $$($(GO) list ./internal/...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$p | grep '^Fuzz'); do \
	    echo "fuzz $$p $$f"; \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
	  done; \
	done

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./internal/...

# End-to-end measurements with the real binaries and servers (the wrapper's
# exec-chain latency, etcd publish->mirror, two hosts under load).
bench-e2e: build
	POPRELAY_BENCH=1 POPRELAY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 30m -run 'Latency|Load' ./t/... | grep -v '^=== '

# The scale figures (README's performance table): watch under a wrapper
# storm with 100k grants, rebuild at 100k and 1M, import of 100k lines, two
# hosts through etcd; each against the real tcprules in the same run.
# BIN=dir measures other binaries (e.g. an older release's).
bench-scale: build
	@sh scripts/bench-scale $(CURDIR)/$(BIN)

# The README's demo: the whole flow on loopback with real Dovecot and tcpserver.
demo:
	bash scripts/demo

# A Debian package in dist/ (scripts/mkdeb; dpkg-deb, no other tools).
deb:
	sh scripts/mkdeb

clean:
	rm -rf $(BIN) dist
