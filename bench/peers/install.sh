#!/usr/bin/env bash
# Installs the peers bench/run.sh measures redis-ws-bridge against, from the package
# registries (nothing is committed but their sources and version pins):
#   node:   ws + ioredis + jsonwebtoken (npm), into bench/peers/node/node_modules
#   python: websockets + redis + PyJWT (PyPI), into the venv bench/peers/python/.venv
#   nchan:  nginx with Debian's libnginx-mod-nchan (apt)
# Usage: bench/peers/install.sh [node] [python] [nchan]   (default: all three)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

peers=("$@")
[ "${#peers[@]}" -gt 0 ] || peers=(node python nchan)
for peer in "${peers[@]}"; do
  case "$peer" in
    node)
      command -v npm >/dev/null || apt_install nodejs npm
      (cd "$here/node" && npm install --no-audit --no-fund --no-package-lock --omit=dev --loglevel=error)
      echo "node peer: node $(node --version), ws $(cd "$here/node" && node -p 'require("ws/package.json").version'), ioredis $(cd "$here/node" && node -p 'require("ioredis/package.json").version')"
      ;;
    python)
      command -v python3 >/dev/null || apt_install python3 python3-venv
      [ -x "$here/python/.venv/bin/python" ] || python3 -m venv "$here/python/.venv"
      "$here/python/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/python/requirements.txt"
      echo "python peer: $("$here/python/.venv/bin/python" --version), websockets $("$here/python/.venv/bin/python" -c 'import websockets; print(websockets.__version__)')"
      ;;
    nchan)
      # The benchmark runs its own nginx (bench/peers/nchan/run.sh) on its own port; a
      # packaged nginx service, if any, is left alone.
      command -v nginx >/dev/null || apt_install nginx-light
      apt_install libnginx-mod-nchan
      echo "nchan peer: $(nginx -v 2>&1), $(dpkg -s libnginx-mod-nchan | sed -n 's/^Version: //p')"
      ;;
    *) echo "unknown peer $peer (node, python, nchan)" >&2; exit 2 ;;
  esac
done
