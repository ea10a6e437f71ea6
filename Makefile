# poprelay — see README.md.
GO      ?= go
BIN     := bin
CMDS    := checkpassword-wrap relayctl cdbbuild
FUZZTIME ?= 5s

.PHONY: all build bench-e2e check deb deps test unit e2e vet fuzz bench demo clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/ $(addprefix ./,$(CMDS))

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 ./internal/... $(addprefix ./,$(CMDS))

e2e: build
	POPRELAY_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./t/...

test: vet unit e2e

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

# The README's demo: the whole flow on loopback with real Dovecot and tcpserver.
demo:
	bash scripts/demo

# A Debian package in dist/ (scripts/mkdeb; dpkg-deb, no other tools).
deb:
	sh scripts/mkdeb

clean:
	rm -rf $(BIN) dist
