# Shoal's build. `make test` and `make demo` are the two commands a new machine needs; both install
# what they use (Debian packages when run as root, Go modules through the module proxy).

GO          ?= go
BIN         := bin
STATICCHECK := $(BIN)/tools/staticcheck
STATICCHECK_VERSION := v0.8.2
ERRCHECK    := $(BIN)/tools/errcheck
ERRCHECK_VERSION := v1.30.0
# Debian packages the demo and the tests use; installed only when missing and only as root.
DEMO_PACKAGES := erofs-utils fuse3 util-linux curl
APT_PACKAGES  := $(DEMO_PACKAGES) e2fsprogs iproute2 attr qemu-system-x86 busybox-static cpio
# containerd 1.6 and runc for the snapshotter's e2e tests (containerd 2.x: the containerd2 target).
APT_PACKAGES  += containerd runc

.PHONY: all build test deps deps-demo apt-install lint unit demo bench fuzz clean kernel-image

all: build

build:
	$(GO) build -o $(BIN)/shoal ./cmd/shoal

# deps installs the Debian packages the tests need. Not root: say what is missing and go on; tests
# that need a missing tool skip with the reason.
deps:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(APT_PACKAGES)"

deps-demo:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(DEMO_PACKAGES)"

apt-install:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null || exit 1; \
	  else echo "not root: cannot install$$missing; tests that need them will skip"; fi; \
	fi

$(STATICCHECK):
	GOBIN=$(abspath $(BIN)/tools) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(ERRCHECK):
	GOBIN=$(abspath $(BIN)/tools) $(GO) install github.com/kisielk/errcheck@$(ERRCHECK_VERSION)

# lint: gofmt, go vet, staticcheck, and errcheck (every error handled or explicitly assigned to _;
# .errcheck-exclude lists the few calls whose errors carry nothing to act on).
lint: $(STATICCHECK) $(ERRCHECK)
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	$(ERRCHECK) -ignoretests -exclude .errcheck-exclude ./...

unit:
	$(GO) test -race -timeout 20m ./...

# containerd2 builds containerd 2.x once (cached in /var/cache/shoal, a few minutes on 2 cores) for
# the snapshotter's e2e test, which skips with the script's reason if it cannot be built.
containerd2:
	-@scripts/containerd/build.sh >/dev/null
unit: containerd2
.PHONY: containerd2

test: deps lint kernel-image unit

# kernel-image makes sure the real-kernel test (demand/cachefiles TestKernel: EROFS in fscache mode
# under qemu) has its Linux 6.12 with cachefiles on-demand mode: built once, cached in
# /var/cache/shoal (about 5 minutes on 2 cores). If it cannot be built here, the test skips and
# says why; nothing else depends on it.
kernel-image:
	@if [ "$$(id -u)" != 0 ]; then echo "not root: the real-kernel test will skip"; \
	elif ./scripts/kernel/build-kernel.sh --path >/dev/null 2>&1; then echo "test kernel: cached"; \
	else echo "building the test kernel once (about 5 minutes; log /tmp/shoal-kernel-build.log)"; \
	  timeout --kill-after=30s 40m ./scripts/kernel/build-kernel.sh >/tmp/shoal-kernel-build.log 2>&1 || \
	  { echo "test kernel build failed; TestKernel will skip. Last lines:"; tail -5 /tmp/shoal-kernel-build.log; }; fi

demo: deps-demo build
	./scripts/demo.sh

bench: deps build
	./scripts/bench.sh

# fuzz runs every fuzz target for FUZZTIME each (default 30s).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s $$pkg || exit 1; \
	  done; done

clean:
	rm -rf $(BIN)

# kernel-test installs what it needs (the kernel's build tools, qemu and what the VM's images are
# made with), builds (once, cached in /var/cache/shoal) a Linux 6.12 with cachefiles on-demand mode
# and runs demand/cachefiles' real-kernel test under qemu. Needs root.
KERNEL_TEST_PACKAGES := bc flex bison libelf-dev libssl-dev cpio make gcc xz-utils \
	qemu-system-x86 busybox-static erofs-utils e2fsprogs
.PHONY: kernel-test deps-kernel
deps-kernel:
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(KERNEL_TEST_PACKAGES)"

kernel-test: deps-kernel
	./scripts/kernel/build-kernel.sh >/dev/null
	SHOAL_KERNEL_TEST=required $(GO) test -count=1 -v -run '^TestKernel$$' ./demand/cachefiles/

# kernel-test-fusetree builds (once, cached) the test kernel's variant without EROFS, fscache and
# cachefiles, and runs e2e's TestFusetreeNoEROFSKernelVM in it: fusetree mode needs only FUSE.
# `make test` runs that test only once this kernel is built (the build takes 6-17 minutes).
.PHONY: kernel-test-fusetree
kernel-test-fusetree: deps-kernel
	SHOAL_KERNEL_VARIANT=fuse-only ./scripts/kernel/build-kernel.sh >/dev/null
	$(GO) test -count=1 -v -run '^TestFusetreeNoEROFSKernelVM$$' ./e2e/
