#!/usr/bin/env bash
# Debian packages run for real: by default what the tests start (Prometheus and
# promtool, redis-server); or those named as COMMAND=PACKAGE arguments (the
# benchmarks' wrk=wrk nginx=nginx-light). Installs what is missing with apt-get (as
# root, or through sudo).
set -euo pipefail
[ $# -gt 0 ] || set -- prometheus=prometheus redis-server=redis-server
missing=()
for wanted in "$@"; do
  command -v "${wanted%%=*}" >/dev/null || missing+=("${wanted#*=}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo ">>> installing Debian packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null; then apt=(sudo apt-get)
else echo "need root or sudo to install: ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" install -y --no-install-recommends "${missing[@]}" \
  || { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
