#!/usr/bin/env bash
# Debian packages the tests start for real: Prometheus (and promtool), redis-server.
# Installs what is missing with apt-get (as root, or through sudo).
set -euo pipefail
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
command -v redis-server >/dev/null || missing+=(redis-server)
[ ${#missing[@]} -eq 0 ] && exit 0
echo ">>> installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null; then apt=(sudo apt-get)
else echo "need root or sudo to install: ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" install -y --no-install-recommends "${missing[@]}" \
  || { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
