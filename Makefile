# attache: `make test` is what CI runs (.ci/run calls it; its deps target installs the Debian packages first).
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/attache/attache/internal/cli.Version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: test deps lint unit fuzz-smoke build image image-source image-smoke demo bench torture man

test: deps lint unit fuzz-smoke image-smoke

# Real servers for the tests: redis-server and redis-tools from Debian, and a
# real Consul agent built from the Go module proxy into a cache directory
# (Debian has no Consul package; see scripts/consul.sh).
deps:
	bash scripts/deps.sh
	$(GO) mod download
	bash scripts/consul.sh >/dev/null

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# The proxy runs TCP connections on event loops by default; its tests run
# a second time on the goroutine engine (ATTACHE_LOOPS=-1), which links,
# Unix sockets and PROXY-header listeners use, and operators may choose.
unit:
	$(GO) test -race -count=1 -timeout 15m ./...
	ATTACHE_LOOPS=-1 $(GO) test -race -count=1 -timeout 5m ./internal/proxy

# A short run of every fuzz target over its committed corpus plus new inputs.
# The budgets are counts of executions (about 10 s each here), not times:
# with a time budget, Go 1.26's fuzz coordinator sometimes fails the run with
# a bare "context deadline exceeded" at the deadline (golang/go#75804, fixed
# in Go 1.27).
fuzz-smoke:
	$(GO) test -run='^$$' -fuzz='^FuzzParseLinkEnv$$' -fuzztime=200000x ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParseFile$$' -fuzztime=50000x ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParseForward$$' -fuzztime=100000x ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParseBackend$$' -fuzztime=50000x ./internal/config
	$(GO) test -run='^$$' -fuzz='^FuzzParseValue$$' -fuzztime=30000x ./internal/discovery/etcd
	$(GO) test -run='^$$' -fuzz='^FuzzParse$$' -fuzztime=400000x ./internal/proxyproto
	$(GO) test -run='^$$' -fuzz='^FuzzServerFrames$$' -fuzztime=20000x ./internal/h2mux

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/attache ./cmd/attache

# Man pages for every command (dist/man/attache.1, attache-check.1 …),
# written from the command tree the binary runs; read one with man -l.
man:
	$(GO) run -ldflags "$(LDFLAGS)" ./internal/cli/genman dist/man

# The image from the binary `build` made (Dockerfile.dist): fast, and needs
# no builder image. The root Dockerfile builds the same image from source.
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_ARGS := --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION)

image: build
	docker build -f Dockerfile.dist $(IMAGE_ARGS) -t attache:dev dist

# The multi-stage Dockerfile, as `docker build -t attache .` runs it, with a
# builder image made from this machine's Go and module cache instead of the
# official one (no registry needed; scripts/go-builder-image.sh).
image-source:
	docker build --build-arg GO_IMAGE=$$(bash scripts/go-builder-image.sh) $(IMAGE_ARGS) -t attache:dev .

# Build the image and run it once.
image-smoke: image
	docker run --rm attache:dev version
	docker run --rm -e REDIS_PORT_6379_TCP=tcp://redis:6379 attache:dev check

demo:
	$(GO) run ./cmd/attache demo

bench:
	bash scripts/deps.sh socat haproxy iperf3
	bash bench/run.sh

# The data path's torture suite, long profile (test/torture; the short one
# runs in unit): waves of hundreds of connections at once through every
# topology for TORTURE_DURATION (default 30m); it logs the seed and figures.
torture:
	bash scripts/deps.sh
	$(GO) test -count=1 -timeout 0 -run '^TestTorture$$' -v ./test/torture -torture.duration=$${TORTURE_DURATION:-30m}
