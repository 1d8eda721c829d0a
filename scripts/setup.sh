#!/usr/bin/env bash
# Installs everything the tests, the demo and the benchmarks need, pinned, on a fresh Debian machine.
# Idempotent: each step is skipped when already done. Run as root for the Debian packages (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real peers for the tests (pinned to the versions the tests were written against).
# libmodbus: the independent Modbus server the collector tests build; tmux: the terminal test of `status --watch`.
APT_PKGS=(mosquitto=2.0.11-1.2+deb12u2 libmodbus-dev=3.1.6-2.1+deb12u1 pkg-config=1.8.1-1 tmux=3.3a-3)
# Node.js runs the npm peers (node-opcua, kinesalite); Debian's is used only when the machine has none.
command -v node >/dev/null 2>&1 || APT_PKGS+=(nodejs npm)
missing=()
for pkg in "${APT_PKGS[@]}"; do
  name=${pkg%%=*}; want=${pkg#*=}
  have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
  [ "$have" = "$want" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: one venv with the package, the simulator extra (compiles the TEP model once, ~1 min) and dev tools.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python packages (pinned in pyproject.toml)"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,sim]'
  echo "$want" > "$stamp"
fi

# npm peers for the tests (node-opcua, kinesalite, modbus-serial), pinned in tests/peers/package-lock.json.
if [ -f tests/peers/package.json ]; then
  if [ ! -d tests/peers/node_modules ] || [ tests/peers/package-lock.json -nt tests/peers/node_modules ]; then
    echo "setup: installing npm test peers"
    (cd tests/peers && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
echo "setup: ready"
