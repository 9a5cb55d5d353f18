#!/usr/bin/env bash
# Build (or reuse) kube-apiserver v1.20.2 and etcd 3.4.13 for the real-apiserver test
# tier (tests/cluster), from Debian bookworm's `kubernetes` source package with Go 1.23.
#
#   tests/cluster/build.sh            build if needed; print the bin directory on stdout
#
# Everything lives outside the checkout, in
#   ${PODGATE_CACHE_DIR:-$HOME/.cache/podgate}/kube-v1.20.2/
#     bin/kube-apiserver bin/etcd   the result (reused as long as both exist)
#     src/                          the downloaded orig tarball
#     gopath/                       GOPATH: the unpacked tree at src/k8s.io/kubernetes
#     gocache/                      the Go build cache (~1.6 GB)
# Progress goes to stderr; stdout carries only the bin directory.
#
# Why this recipe (kube-apiserver 1.20 is the newest one a reachable registry carries
# as source; the Go module proxy is out of reach):
# - GOPATH mode, as Kubernetes 1.20 built: module mode wants go.mod updates.
# - vendored modern-go/reflect2 1.0.1 panics at run time on Go >= 1.18: Debian's 1.0.2
#   replaces it.
# - the tarball lacks pkg/generated/openapi/zz_generated.openapi.go, which `make`
#   generates with openapi-gen (build/root/Makefile.generated_files, gen_openapi).
# - the version ldflags, or clients see v0.0.0.
# Safe to interrupt and re-run: it unpacks afresh, builds into bin.tmp and renames it to
# bin at the end; a lock keeps two runs (two checkouts) from building at once.
set -euo pipefail

KUBE_VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
ORIG_TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
GO=/usr/lib/go-1.23/bin/go
REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
HERE=$(cd "$(dirname "$0")" && pwd)

CACHE=${PODGATE_CACHE_DIR:-$HOME/.cache/podgate}/kube-v$KUBE_VERSION
BIN=$CACHE/bin

built() { [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/etcd" ]; }
if built; then
  echo "$BIN"
  exit 0
fi

say() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: error: $*" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
if ! flock -n 9; then
  say "another build holds $CACHE/.build.lock; waiting for it"
  flock 9
fi
if built; then # the other run built them
  echo "$BIN"
  exit 0
fi

# --------------------------------------------------------------------- prerequisites
missing=()
[ -x "$GO" ] || missing+=("golang-1.23 (from bookworm-backports)")
[ -f "$REFLECT2/go_above_118.go" ] || missing+=("golang-github-modern-go-reflect2-dev")
if [ ! -f "$CACHE/src/$ORIG_TARBALL" ]; then
  command -v dpkg-source >/dev/null || missing+=("dpkg-dev")
fi
if [ ${#missing[@]} -gt 0 ]; then
  die "missing Debian packages: ${missing[*]}.
  Install them with: apt-get install golang-1.23 golang-github-modern-go-reflect2-dev dpkg-dev
  golang-1.23 needs bookworm-backports in apt's sources, e.g. the line
    deb http://deb.debian.org/debian bookworm-backports main
  (.ci/run --setup-only adds it and installs everything the tests need)."
fi

# --------------------------------------------------------------------- source
if [ ! -f "$CACHE/src/$ORIG_TARBALL" ]; then
  say "downloading the kubernetes $DEB_VERSION source package"
  download=$CACHE/src.tmp
  rm -rf "$download"
  mkdir -p "$download"
  if ! (cd "$download" && apt-get source --download-only "kubernetes=$DEB_VERSION") >&2; then
    die "cannot download Debian's kubernetes=$DEB_VERSION source package.
  apt needs a deb-src line for bookworm, e.g. /etc/apt/sources.list.d/bookworm-src.sources:
    Types: deb-src
    URIs: http://deb.debian.org/debian
    Suites: bookworm
    Components: main
    Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
  then apt-get update (.ci/run --setup-only does both)."
  fi
  mkdir -p "$CACHE/src"
  mv "$download/$ORIG_TARBALL" "$CACHE/src/$ORIG_TARBALL"
  rm -rf "$download"
fi

started=$SECONDS
export GOPATH=$CACHE/gopath GOCACHE=$CACHE/gocache
export GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOENV=off
unset GOROOT GOBIN
TREE=$GOPATH/src/k8s.io/kubernetes
say "unpacking into $TREE"
rm -rf "$TREE" "$CACHE/tools" "$BIN.tmp"
mkdir -p "$TREE" "$CACHE/tools" "$BIN.tmp"
tar -xzf "$CACHE/src/$ORIG_TARBALL" -C "$TREE" --strip-components=1
cd "$TREE"

say "replacing vendored modern-go/reflect2 with Debian's $(basename "$(dirname "$REFLECT2")")/reflect2 1.0.2"
rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
cp "$REFLECT2"/*.go "$REFLECT2"/*.s vendor/github.com/modern-go/reflect2/
rm -f vendor/github.com/modern-go/reflect2/*_test.go

# --------------------------------------------------------------------- openapi
# The packages tagged +k8s:openapi-gen=, as Makefile.generated_files finds them
# (KUBE_OPENAPI_TAG_FILES: staging named as vendor/, no code-generator/sample-apiserver).
say "generating pkg/generated/openapi/zz_generated.openapi.go"
"$GO" build -o "$CACHE/tools/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
openapi_dirs=$(
  find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print |
    sed -e 's|^\./staging/src|vendor|' -e 's|^\./||' |
    xargs grep -l '^// *+k8s:' |
    grep -v -e '^vendor/k8s\.io/code-generator/' -e '^vendor/k8s\.io/sample-apiserver/' |
    xargs grep -l '+k8s:openapi-gen=' |
    xargs -n1 dirname | LC_ALL=C sort -u
)
inputs=$(echo "$openapi_dirs" | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
"$CACHE/tools/openapi-gen" --logtostderr \
  -i "$inputs" \
  -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "$CACHE/tools/violations.report" 2>"$CACHE/tools/openapi-gen.log" ||
  { tail -20 "$CACHE/tools/openapi-gen.log" >&2; die "openapi-gen failed"; }
# Its API-rule report equals the checked-in list only when it saw every package.
if ! diff -q "$CACHE/tools/violations.report" api/api-rules/violation_exceptions.list >/dev/null; then
  die "openapi-gen's API rule report differs from api/api-rules/violation_exceptions.list
  (the generated openapi is incomplete); see $CACHE/tools/violations.report"
fi

# --------------------------------------------------------------------- binaries
ldflags="-s -w"
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version \
  k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
  ldflags="$ldflags -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
  ldflags="$ldflags -X $pkg.gitTreeState=archive"
  ldflags="$ldflags -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done

say "building etcd (~30 s cold)"
mkdir -p cmd/podgate-test-etcd
cp "$HERE/etcd/main.go" cmd/podgate-test-etcd/main.go
"$GO" build -ldflags "$ldflags" -o "$BIN.tmp/etcd" ./cmd/podgate-test-etcd

say "building kube-apiserver (~135 s cold on 2 cores)"
"$GO" build -ldflags "$ldflags" -o "$BIN.tmp/kube-apiserver" ./cmd/kube-apiserver

"$BIN.tmp/kube-apiserver" --version | grep -qx "Kubernetes v$KUBE_VERSION" ||
  die "the built kube-apiserver reports $("$BIN.tmp/kube-apiserver" --version), not v$KUBE_VERSION"
rm -rf "$BIN"
mv "$BIN.tmp" "$BIN"
say "built in $((SECONDS - started)) s: $BIN"
echo "$BIN"
