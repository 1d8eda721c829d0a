#!/bin/sh
# Install step of every factoryedge component (shipped as install.sh at the root of each artifact zip).
#
# Greengrass runs Install at deployment AND at every nucleus start, so this must be idempotent and cheap when
# nothing changed: the venv is kept, pip runs only when the locks' hash differs from the marker written after the
# last successful install. A zip built with --offline-wheels carries wheels/ and installs with --no-index
# (air-gapped sites).
#
# Both files are locks (tools/lock.py): every distribution with the sha256 of each file it may come as. pip runs
# with --require-hashes (a file that differs from the one locked fails the install, whatever the index or a mirror
# serves) and --no-deps (nothing outside the lock is ever resolved); `pip check` then proves the lock was whole.
# requirements-bootstrap.txt (pip, setuptools) goes first: the venv module's bundled ones are old, and setuptools
# builds the two sdist-only pins with --no-build-isolation, so no unhashed build dependency is fetched.
#
# Usage: sh install.sh VENV_DIR        Python: $FACTORYEDGE_PYTHON, else python3 (needs the venv module).
set -eu

venv="$1"
root=$(cd "$(dirname "$0")" && pwd)
req="$root/requirements.txt"
boot="$root/requirements-bootstrap.txt"
marker="$venv/.factoryedge-requirements.sha256"
python="${FACTORYEDGE_PYTHON:-python3}"

# The locks hold files for these Pythons only (SUPPORTED_PYTHONS in tools/gg_lock.py; a test keeps them equal):
# any other would fail deep inside pip, so say it first, naming the version found.
supported="3.10 3.11 3.12 3.13"
check_python() {  # $1: interpreter
    found=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || {
        echo "install.sh: '$1' does not run: install Python 3.10 to 3.13, or set FACTORYEDGE_PYTHON to one" >&2
        exit 1
    }
    case " $supported " in
        *" $found "*) ;;
        *) echo "install.sh: Python $found ($1) is not supported: this component installs on Python 3.10 to" \
                "3.13 (the versions its locks hold files for); install one and set FACTORYEDGE_PYTHON to it" >&2
           exit 1 ;;
    esac
}

# A venv whose interpreter no longer runs (the system Python was upgraded or removed) is rebuilt.
if ! "$venv/bin/python" -c "" >/dev/null 2>&1; then
    check_python "$python"
    echo "install.sh: creating venv $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv" || {
        echo "install.sh: '$python -m venv' failed: install python3-venv, or set FACTORYEDGE_PYTHON" >&2
        exit 1
    }
fi

check_python "$venv/bin/python"

want=$(cat "$boot" "$req" | sha256sum | cut -d ' ' -f 1)
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
# -I: pip sees only the venv, not PYTHONPATH or the working directory (a checkout there holds the project's own
# metadata, which made `pip check` demand every library of every component)
pip_install() {
    "$venv/bin/python" -I -m pip install --disable-pip-version-check --no-input --require-hashes --no-deps "$@"
}
pip_install "$@" -r "$boot"
pip_install --no-build-isolation "$@" -r "$req"
"$venv/bin/python" -I -m pip check || {
    echo "install.sh: the lock in $req misses a dependency (pip check above): regenerate it with tools/lock.py" >&2
    exit 1
}
echo "$want" > "$marker"
echo "install.sh: installed $req"
