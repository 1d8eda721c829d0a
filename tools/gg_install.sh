#!/bin/sh
# Install step of every factoryedge component (shipped as install.sh at the root of each artifact zip).
#
# Greengrass runs Install at deployment AND at every nucleus start, so this must be idempotent and cheap when
# nothing changed: the venv is kept, pip runs only when requirements.txt's hash differs from the marker written
# after the last successful install. A zip built with --offline-wheels carries wheels/ and installs with
# --no-index (air-gapped sites).
#
# Usage: sh install.sh VENV_DIR        Python: $FACTORYEDGE_PYTHON, else python3 (needs the venv module).
set -eu

venv="$1"
root=$(cd "$(dirname "$0")" && pwd)
req="$root/requirements.txt"
marker="$venv/.factoryedge-requirements.sha256"
python="${FACTORYEDGE_PYTHON:-python3}"

# A venv whose interpreter no longer runs (the system Python was upgraded or removed) is rebuilt.
if ! "$venv/bin/python" -c "" >/dev/null 2>&1; then
    echo "install.sh: creating venv $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv" || {
        echo "install.sh: '$python -m venv' failed: install python3-venv, or set FACTORYEDGE_PYTHON" >&2
        exit 1
    }
fi

want=$(sha256sum "$req" | cut -d ' ' -f 1)
have=$(cat "$marker" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
    echo "install.sh: requirements unchanged ($want), nothing to install"
    exit 0
fi

rm -f "$marker"
if [ -d "$root/wheels" ]; then
    target=$(cat "$root/wheels/PYTHON_VERSION")
    actual=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$target" != "$actual" ]; then
        echo "install.sh: wheels were built for Python $target but $venv runs Python $actual:" \
             "rebuild with 'tools/gg_build.py --offline-wheels ... --python-version $actual'" >&2
        exit 1
    fi
    set -- --no-index --find-links "$root/wheels"
else
    set --
fi
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input "$@" -r "$req"
echo "$want" > "$marker"
echo "install.sh: installed $req"
