#!/usr/bin/env bash
# Installs what the demo or the tests need, pinned, on a fresh Debian machine.
#   scripts/setup.sh demo   the demo's: mosquitto and the venv with the simulator (`make demo`); no npm, no test peers
#   scripts/setup.sh [test] everything the tests, the checks and the benchmarks need (`make test`, `make check`, CI)
# Idempotent: each step is skipped when already done. Run as root for the Debian packages (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-test}
case "$MODE" in demo|test) ;; *) echo "usage: scripts/setup.sh [demo|test]" >&2; exit 2 ;; esac

# Debian packages (pinned to the versions the tests were written against). mosquitto: the demo's broker and the
# tests' MQTT peer. libmodbus: the independent Modbus server the collector tests build; tmux: the terminal test of
# `status --watch`.
APT_PKGS=(mosquitto=2.0.11-1.2+deb12u2)
if [ "$MODE" = test ]; then
  APT_PKGS+=(libmodbus-dev=3.1.6-2.1+deb12u1 pkg-config=1.8.1-1 tmux=3.3a-3)
  # Node.js runs the npm peers (node-opcua, kinesalite); Debian's is used only when the machine has none.
  command -v node >/dev/null 2>&1 || APT_PKGS+=(nodejs npm)
fi
missing=()
for pkg in "${APT_PKGS[@]}"; do
  name=${pkg%%=*}; want=${pkg#*=}
  have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
  [ "$have" = "$want" ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ] && [ "$MODE" = demo ] && [ "$(id -u)" -ne 0 ]; then
  # the demo runs without its broker (the file destination only): no reason to stop a user who is not root
  echo "setup: not root, so ${missing[*]} is not installed: the demo will deliver to its file only" >&2
  missing=()
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install Debian packages: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: one venv with the package, the simulator extra (compiles the TEP model once, ~1 min) and, for the tests,
# the dev tools. A venv set up for the tests serves the demo too.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-stamp        # the tests' install: .[dev,sim]
demo_stamp=.venv/.setup-stamp-demo  # the demo's: .[sim]
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$MODE" = demo ]; then
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] && [ "$(cat "$demo_stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python packages for the demo (pinned in pyproject.toml)"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[sim]'
    echo "$want" > "$demo_stamp"
  fi
  echo "setup: ready for the demo"
  exit 0
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
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
