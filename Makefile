# The two commands a new user needs: `make demo` and `make test`. Everything else is for developers.
PY := .venv/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup setup-demo test soak check demo bench build clean

# What the tests, the checks and the benchmarks need (Debian peers, npm peers, dev tools), as CI installs it.
setup:
	@bash scripts/setup.sh test

# What the demo needs only: mosquitto and the venv with the simulator; no npm registry, no test peers.
setup-demo:
	@bash scripts/setup.sh demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n 2 -m "not index" tests

# The long checks: the exhaustive bit-flip sweep of the embedded store, then the chaos soak of the whole gateway
# (SOAK_MINUTES, default 20), which writes bench/soak.json and fails on any loss or crash loop.
soak: setup
	FACTORYEDGE_SOAK=1 $(PY) -m pytest -q -p no:cacheprovider tests/streams/test_embedded_corruption.py
	$(PY) -m bench.soak

# Static checks, and every lock resolved against the package index for every target Python and platform.
check: setup
	.venv/bin/ruff check gateway devkit simulator components tests bench tools
	.venv/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider -n 2 -m index tests/security/test_lock.py

demo: setup-demo
	$(PY) -m devkit.demo

bench: setup
	$(PY) bench/run.py

build: setup
	$(PY) tools/gg_build.py

clean:
	rm -rf greengrass-build .run bench/results.json
