# autofs-restore-hook: build, test, demo, benchmarks, install.
PREFIX   ?= /usr
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/libexec/oci/hooks.d
HOOKSDIR ?= $(PREFIX)/share/containers/oci/hooks.d
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PKG      := github.com/autofs-restore-hook/autofs-restore-hook
BIN      := bin/autofs-restore-hook
# The CRIU plugin (plugin/): CRIU loads every *.so of this directory (Debian's
# build and CRIU's default; --libdir or CRIU_LIBS_DIR elsewhere).
CRIU_PLUGIN_DIR ?= /usr/lib/criu
PLUGIN   := bin/autofs-restore-hook.so
# A static binary: it joins the container's time namespace in a C
# constructor (internal/cstart), so cgo is on and linked statically.
GOBUILD  := CGO_ENABLED=1 go build -trimpath -tags osusergo,netgo \
	-ldflags '-linkmode external -extldflags -static -X $(PKG)/hook.Version=$(VERSION)'

.PHONY: all build plugin lab-tools deps test test-kernels unit fuzz demo bench install install-json uninstall pkg-files deb rpm test-deps image image-deps clean

all: build

# gcc and the static C library are needed for the cgo constructor.
deps:
	@command -v gcc >/dev/null && test -e /usr/lib/x86_64-linux-gnu/libc.a || \
		{ echo "installing gcc and libc6-dev"; export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q -o DPkg::Lock::Timeout=900 gcc libc6-dev >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q -o DPkg::Lock::Timeout=900 gcc libc6-dev >/dev/null; }; }

build: deps plugin
	$(GOBUILD) -o $(BIN) ./cmd/autofs-restore-hook

# The CRIU plugin: libc only, only CR_PLUGIN_DESC exported; it runs the
# binary where `make install` puts it (BINDIR).
plugin: deps
	@mkdir -p $(dir $(PLUGIN))
	$(CC) -fPIC -shared -O2 -Wall -Wextra -Werror -fvisibility=hidden \
		-DARH_BINARY='"$(BINDIR)/autofs-restore-hook"' -o $(PLUGIN) plugin/autofs_restore_hook_plugin.c

# Everything: formatting, vet, unit, integration (root, real autofs) and
# end-to-end (runc + CRIU lab, provisioned by test/lab/provision.sh), run by
# test/tests.sh: natively on a kernel with autofs, else in a QEMU guest
# booting Debian 12's kernel (test/vm), then the cgroup v2 tests in a
# second guest (Debian 13's kernel, only cgroup v2). ARH_TEST_VM=1 forces the VM,
# ARH_TEST_VM=0 forbids it; RUN=regexp runs only the matching tests.
RUN ?=
# rpm (the tool) reads the .rpm in TestNoAutofsPackagesHoldTheSameFiles.
test-deps:
	@command -v rpm >/dev/null || \
		{ echo "installing rpm"; export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q -o DPkg::Lock::Timeout=900 rpm >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q -o DPkg::Lock::Timeout=900 rpm >/dev/null; }; }

test: build deb rpm image test-deps
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	go vet ./...
	go vet -tags failpoints ./...
	CGO_ENABLED=0 go vet ./hook/... ./mounts/... ./units/... ./test/...
	AUTOFS_RESTORE_HOOK_BIN=$(CURDIR)/$(BIN) AUTOFS_RESTORE_HOOK_PLUGIN=$(CURDIR)/$(PLUGIN) AUTOFS_RESTORE_HOOK_DEB=$(CURDIR)/$(DEB) AUTOFS_RESTORE_HOOK_RPM=$(CURDIR)/$(RPM) AUTOFS_RESTORE_HOOK_IMAGE=$(CURDIR)/$(IMAGE) bash test/tests.sh $(if $(RUN),-run '$(RUN)')
	$(MAKE) fuzz

# The kernel matrix: every test in the VM on Debian 12's and on Debian 13's
# stock kernel, one table row per kernel.
KERNELS ?= bookworm trixie
test-kernels: build
	AUTOFS_RESTORE_HOOK_BIN=$(CURDIR)/$(BIN) bash test/kernels.sh $(KERNELS)

# Bounded fuzzing of the two parsers of untrusted input; the corpus in
# testdata/fuzz is replayed by every plain `go test` too. The budget is a
# count of executions, not a duration: with a duration Go 1.26's fuzz
# coordinator can report its own deadline as a failure ("context deadline
# exceeded", no crasher; golang/go#75804, fixed in Go 1.27).
FUZZTIME ?= 300000x
fuzz:
	go test -run '^$$' -fuzz '^FuzzReadState$$' -fuzztime $(FUZZTIME) ./hook
	go test -run '^$$' -fuzz '^FuzzParseOptions$$' -fuzztime $(FUZZTIME) ./mounts

# Unit and integration tests only (no lab).
unit: deps
	go test -count=1 ./hook/... ./mounts/... ./units/... ./internal/...

# The lab's own tool (test/lab/labconfig: a bundle's config.json, with the
# runtime-spec types), built here: the test VM's guest builds nothing.
lab-tools:
	go build -o bin/labconfig ./test/lab/labconfig

# In the test VM when this kernel has no autofs (as tests.sh decides).
demo: build lab-tools
	bash test/vm/maybe.sh bash test/demo.sh $(CURDIR)/$(BIN)

# Benchmarks (root, the lab): no-op cost, discovery, the OCI follower's
# CPU, fix against the unavoidable work and a shell baseline, and N
# containers restored at once (-scale 1,10,20; the longest). Prints the
# tables of BENCHMARKS.md. The lab part runs in the test VM when this
# kernel has no autofs (as tests.sh decides); BENCH_ARGS go to test/bench
# (-runs, -sizes, -scale, -only).
BENCH_ARGS ?=
bench: build lab-tools
	@echo "## 2. Discovery (parse and classify mountinfo)"; echo
	go test -run '^$$' -bench BenchmarkParseTable -benchmem -count 1 ./mounts | grep -E '^Benchmark|^cpu'
	@echo
	go build -o bin/bench ./test/bench
	bash test/vm/maybe.sh $(CURDIR)/bin/bench -bin $(CURDIR)/$(BIN) -plugin $(CURDIR)/$(PLUGIN) $(BENCH_ARGS)

# The binary first: a hooks.d JSON naming a missing binary breaks every
# container start. The CRIU plugin after it too (a plugin whose binary is
# missing only logs a line per restore, but no restore should see that).
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/autofs-restore-hook
	$(MAKE) --no-print-directory install-json
	install -D -m 0644 $(PLUGIN) $(DESTDIR)$(CRIU_PLUGIN_DIR)/autofs-restore-hook.so

# The hooks.d JSON, naming the binary where this install puts it (BINDIR:
# /usr/local/libexec/... with PREFIX=/usr/local).
install-json:
	@mkdir -p $(DESTDIR)$(HOOKSDIR)
	sed 's|"/usr/libexec/oci/hooks.d/autofs-restore-hook"|"$(BINDIR)/autofs-restore-hook"|' \
		hooks.d/autofs-restore-hook.json > $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json.tmp
	grep -q '"$(BINDIR)/autofs-restore-hook"' $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json.tmp
	chmod 0644 $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json.tmp
	mv $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json.tmp $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json

# The JSON and the plugin first, for the same reasons.
uninstall:
	rm -f $(DESTDIR)$(HOOKSDIR)/autofs-restore-hook.json
	rm -f $(DESTDIR)$(CRIU_PLUGIN_DIR)/autofs-restore-hook.so
	rm -f $(DESTDIR)$(BINDIR)/autofs-restore-hook

# The Debian and RPM packages, from one description (packaging/nfpm.yaml,
# built by nfpm, pinned in packaging/go.mod: the Go toolchain fetches it
# from the module proxy the first time): the binary, the hooks.d JSON and
# the CRIU plugin where `make install PREFIX=/usr` puts them (podman and
# CRI-O then find the hook without --hooks-dir; every CRIU of the host
# loads the plugin from /usr/lib/criu), the manual page made by the binary
# itself (`autofs-restore-hook man`), README, RELIABILITY, docs/ and the
# other shipped configuration as documentation (the CRIU line is not
# written into /etc/criu: wiring the action script stays the operator's
# choice). The prerm removes the JSON and the plugin before the binary.
PKG_VERSION ?= 0.0~git$(shell git log -1 --format=%cd.%h --date=format:%Y%m%d 2>/dev/null || echo 0)
PKG_ARCH    := $(shell go env GOARCH)
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null || go env GOARCH)
DEB         := bin/autofs-restore-hook_$(PKG_VERSION)_$(DEB_ARCH).deb
RPM         := bin/autofs-restore-hook-$(PKG_VERSION).$(shell uname -m).rpm
NFPM        := ARH_PKG_VERSION='$(PKG_VERSION)' ARH_PKG_ARCH=$(PKG_ARCH) go -C packaging tool nfpm package -f nfpm.yaml
pkg-files: build
	@mkdir -p bin/pkg
	$(BIN) man | gzip -9n > bin/pkg/autofs-restore-hook.8.gz
deb: pkg-files
	rm -f bin/autofs-restore-hook_*.deb
	$(NFPM) -p deb -t $(CURDIR)/$(DEB)
	@echo "built $(DEB)"
rpm: pkg-files
	rm -f bin/autofs-restore-hook-*.rpm
	$(NFPM) -p rpm -t $(CURDIR)/$(RPM)
	@echo "built $(RPM)"

# The node installer's image (hooks.d/kubernetes-daemonset.yaml), made
# with buildah from nothing: the static binary as /autofs-restore-hook and
# the CRIU plugin as /autofs-restore-hook.so, no base image, the
# DaemonSet's command as default. Written as an OCI archive (podman load
# -i, or skopeo copy oci-archive:... to a registry); nothing is published.
# buildah keeps its working container in bin/, apart from the host's
# container storage.
IMAGE_TAG := $(subst ~,-,$(PKG_VERSION))
IMAGE     := bin/autofs-restore-hook-image_$(IMAGE_TAG).oci.tar
BUILDAH   := buildah --root $(CURDIR)/bin/buildah/root --runroot $(CURDIR)/bin/buildah/run --storage-driver vfs
image-deps:
	@command -v buildah >/dev/null || \
		{ echo "installing buildah"; export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q -o DPkg::Lock::Timeout=900 --no-install-recommends buildah >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q -o DPkg::Lock::Timeout=900 --no-install-recommends buildah >/dev/null; }; }
image: build image-deps
	rm -f bin/autofs-restore-hook-image_*.oci.tar
	ctr=$$($(BUILDAH) from scratch) && \
	{ $(BUILDAH) copy --chmod 0755 $$ctr $(BIN) /autofs-restore-hook >/dev/null && \
	  $(BUILDAH) copy --chmod 0644 $$ctr $(PLUGIN) /autofs-restore-hook.so >/dev/null && \
	  $(BUILDAH) config --entrypoint '["/autofs-restore-hook"]' \
		--cmd 'node install --root /host --plugin /autofs-restore-hook.so --wait' \
		--label org.opencontainers.image.title=autofs-restore-hook \
		--label org.opencontainers.image.version=$(IMAGE_TAG) $$ctr && \
	  $(BUILDAH) commit --quiet --format oci $$ctr oci-archive:$(CURDIR)/$(IMAGE):autofs-restore-hook:$(IMAGE_TAG) >/dev/null; \
	  rc=$$?; $(BUILDAH) rm $$ctr >/dev/null; exit $$rc; }
	@echo "built $(IMAGE) (autofs-restore-hook:$(IMAGE_TAG))"

clean:
	rm -rf bin
