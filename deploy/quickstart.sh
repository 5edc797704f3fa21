#!/usr/bin/env bash
# cairn quickstart: installs what cairn needs on a fresh Debian machine (as root), builds
# it, starts a local registry with two demo images that share their base layer, starts
# cairnd with its embedded defaults on /run/cairn/cairn.sock, pulls both images, shows
# them and `cairnctl du` (the shared layer is stored once), then runs a pod and a
# container from one of them and shows its output.
#
#   sudo ./deploy/quickstart.sh        # set up and run
#   sudo ./deploy/quickstart.sh stop   # stop the daemon and the registry it started
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=/run/cairn-quickstart
REGISTRY_PORT=${REGISTRY_PORT:-5000}
REGISTRY=127.0.0.1:$REGISTRY_PORT

stop() {
  for name in cairnd registry; do
    if [ -f "$RUN/$name.pid" ]; then
      pid=$(cat "$RUN/$name.pid")
      kill "$pid" 2>/dev/null && echo "stopped $name ($pid)" || true
      rm -f "$RUN/$name.pid"
    fi
  done
}

if [ "${1:-}" = stop ]; then
  stop
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "run as root: cairn mounts overlays and makes namespaces" >&2; exit 1; }

echo "== installing packages"
export DEBIAN_FRONTEND=noninteractive
need=()
for p in docker-registry skopeo busybox-static protobuf-compiler; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

echo "== building cairn (profile dist)"
# As a release ships them: profile dist (LTO; see Cargo.toml), about 7 minutes from scratch.
cargo build --profile dist --locked -q -p cairnd -p cairn-shim -p cairnctl --bins -p cairn-tests --bin cairn-mkimage
BIN=${CARGO_TARGET_DIR:-$PWD/target}/dist

mkdir -p "$RUN"
stop >/dev/null
echo "== starting a local registry on $REGISTRY"
cat > "$RUN/registry.yml" <<YML
version: 0.1
storage:
  filesystem:
    rootdirectory: $RUN/registry
http:
  addr: $REGISTRY
log:
  level: warn
YML
docker-registry serve "$RUN/registry.yml" > "$RUN/registry.log" 2>&1 &
echo $! > "$RUN/registry.pid"
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$REGISTRY_PORT") 2>/dev/null && break; sleep 0.1; done

echo "== building and pushing two images that share their busybox base layer"
for app in one two; do
  rm -rf "$RUN/layout-$app"
  "$BIN/cairn-mkimage" "$RUN/layout-$app" "$app"
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$RUN/layout-$app:latest" "docker://$REGISTRY/demo/app-$app:latest"
done

echo "== starting cairnd (embedded defaults: /var/lib/cairn, /run/cairn/cairn.sock)"
"$BIN/cairnd" > "$RUN/cairnd.log" 2>&1 &
echo $! > "$RUN/cairnd.pid"
for _ in $(seq 50); do [ -S /run/cairn/cairn.sock ] && break; sleep 0.1; done
CTL="$BIN/cairnctl"

echo "== cairnctl image pull"
$CTL image pull "$REGISTRY/demo/app-one:latest"
$CTL image pull "$REGISTRY/demo/app-two:latest"
echo "== cairnctl image ls"
$CTL image ls
echo "== cairnctl du (the shared base layer is stored once)"
$CTL du
echo "== cairnctl run: a pod and a container from demo/app-one"
$CTL run --rm "$REGISTRY/demo/app-one:latest" || echo "(running containers: see the README's feature table)"
echo
echo "cairnd is running (pid $(cat "$RUN/cairnd.pid"), log $RUN/cairnd.log)."
echo "Try: $CTL image ls | $CTL du | $CTL ps -s    Stop: $0 stop"
