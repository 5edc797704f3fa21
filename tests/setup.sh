#!/usr/bin/env bash
# Installs what cairn's tests need on a fresh Debian (bookworm) machine, as root, and
# builds the slow parts once per machine under /var/cache/cairn-tests (never in the repo):
#
#   * Debian packages: the registry, skopeo and busybox the test images come from, the CNI
#     plugins, runc, protoc, Go 1.19 with grpc-go 1.33 and golang/protobuf (the Go CRI
#     client), htpasswd, openssl, and the tools the tests call.
#   * npm modules of the streaming tests' independent clients (spdy-transport, ws).
#   * A Python virtualenv with PyPI's grpcio and grpcio-tools (the C-core CRI client).
#   * kubelet v1.20.2, built from Debian's `kubernetes` source package with Debian's Go in
#     GOPATH mode (about 5 minutes on 2 cores, then kept for every later run).
#
# Quick when everything is there already. tests/run.sh runs this, then the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/setup.sh: run as root" >&2; exit 1; }

CACHE=/var/cache/cairn-tests
KUBELET_VERSION=v1.20.2
KUBELET_DIR=$CACHE/kubelet-$KUBELET_VERSION
export DEBIAN_FRONTEND=noninteractive

packages=(
  # docker-registry: the reference registry the tests pull from; skopeo: pushes test
  # images; busybox-static: the test images' contents; apache2-utils: htpasswd for the
  # auth registry; openssl: its TLS cert; protobuf-compiler: protoc for the bindings.
  docker-registry skopeo busybox-static apache2-utils openssl protobuf-compiler
  zstd ca-certificates curl
  # The CNI tests.
  containernetworking-plugins iproute2 iptables nftables util-linux
  # The external-OCI-runtime handler tests.
  runc
  # The Go CRI client (grpc-go 1.33, golang/protobuf 1.3), and kubelet's build.
  golang-go golang-google-grpc-dev golang-goprotobuf-dev dpkg-dev rsync
)
need=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
updated=0
apt_update() {
  if [ "$updated" = 0 ]; then
    apt-get update -qq
    updated=1
  fi
}
if [ ${#need[@]} -gt 0 ]; then
  echo "== tests/setup.sh: installing ${need[*]}"
  apt_update
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# kubectl: an independent client of the streaming server (streaming/tests/kubectl.rs).
# Some machines bring their own; Debian's kubernetes-client otherwise.
if ! command -v kubectl >/dev/null; then
  apt_update
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

# node + npm: the independent SPDY/WebSocket clients of the streaming tests. Some
# machines bring their own Node.js; Debian's otherwise.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_update
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [ ! -d streaming/tests/js/node_modules ] ||
   [ streaming/tests/js/package-lock.json -nt streaming/tests/js/node_modules ]; then
  echo "== tests/setup.sh: npm modules of the streaming clients"
  (cd streaming/tests/js && npm ci --no-audit --no-fund --loglevel=error && touch node_modules)
fi

# The Python client's virtualenv (grpcio from PyPI: gRPC C-core, which sends the
# %-encoded socket path as :authority).
venv=$CACHE/venv
requirements=tests/clients/python/requirements.txt
if [ ! -x "$venv/bin/python3" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "== tests/setup.sh: Python virtualenv with $(tr '\n' ' ' < "$requirements")"
  mkdir -p "$CACHE"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt_update
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

# kubelet v1.20.2 from Debian's source package (the last kubelet Debian ships; it speaks
# CRI v1alpha2 and links grpc-go 1.27, which sends the socket path as :authority).
if ! "$KUBELET_DIR/kubelet" --version 2>/dev/null | grep -qx "Kubernetes $KUBELET_VERSION"; then
  echo "== tests/setup.sh: building kubelet $KUBELET_VERSION from Debian's kubernetes source (about 5 minutes)"
  if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # deb-src entries mirroring the deb ones (deb822 .sources or one-line format).
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      sed -n 's/^Types: deb$/Types: deb-src/p; /^Types:/!p' "$f" > "/etc/apt/sources.list.d/cairn-src-$(basename "$f")"
    done
    if [ -f /etc/apt/sources.list ]; then
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/cairn-src.list
    fi
    updated=0
  fi
  apt_update
  src=$CACHE/src
  rm -rf "$src"
  mkdir -p "$src"
  (cd "$src" && apt-get source -qq kubernetes >/dev/null 2>&1)
  tree=$(find "$src" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -1)
  [ -n "$tree" ] || { echo "tests/setup.sh: apt-get source kubernetes gave no tree" >&2; exit 1; }
  # Debian's Go first (another `go` may be on PATH); GOPATH mode with the vendor dir, as
  # the tree's hack/ scripts do (they set GO111MODULE=off themselves).
  go_root=$(ls -d /usr/lib/go-1.* 2>/dev/null | sort -V | tail -1)
  (cd "$tree" &&
    PATH=$go_root/bin:$PATH CGO_ENABLED=0 GO111MODULE=off \
    SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp) \
    hack/make-rules/build.sh cmd/kubelet >/dev/null)
  install -D -m0755 "$tree/_output/bin/kubelet" "$KUBELET_DIR/kubelet.tmp"
  mv "$KUBELET_DIR/kubelet.tmp" "$KUBELET_DIR/kubelet"
  "$KUBELET_DIR/kubelet" --version
  # The build tree is 1.6 GB; the binary is all the tests need.
  rm -rf "$src"
fi
echo "== tests/setup.sh: ready"
