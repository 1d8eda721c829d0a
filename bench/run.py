"""`make bench`: run every bench/bench_*.py and write bench/results.json.

Each module has ``run() -> dict[str, float]``. The result is one flat object of metric name -> number, including
``machine.*`` numbers (cores, 1-minute load average before and after) so figures can be read against the load, and
``collector.rss_mb``: the largest steady-state RSS of the three collector processes (each bench reports its own
``collector.<protocol>.rss_mb``).
Usage: ``bench/run.py [--only NAME ...]`` (NAME = module suffix, e.g. streams).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks (e.g. streams anomaly)")
    args = parser.parse_args()
    names = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only]
    out_path = ROOT / "bench" / "results.json"
    results: dict[str, object] = json.loads(out_path.read_text()) if args.only and out_path.exists() else {}
    load_before = os.getloadavg()
    failed = []
    for name in names:
        t0 = time.time()
        print(f"bench: {name} ...", flush=True)
        try:
            figures = importlib.import_module(f"bench.bench_{name}").run()
        except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        for key, value in figures.items():
            print(f"  {key} = {value}")
        results.update(figures)
        print(f"bench: {name} done in {time.time() - t0:.0f} s", flush=True)
    results.pop("machine", None)  # an old nested entry from before the file was flat
    collector_rss = [float(v) for k, v in results.items()  # type: ignore[arg-type]
                     if k.startswith("collector.") and k.endswith(".rss_mb") and k != "collector.rss_mb"]
    if collector_rss:
        results["collector.rss_mb"] = max(collector_rss)
    results["machine.cores"] = os.cpu_count() or 0
    results["machine.load1_before"] = round(load_before[0], 2)
    results["machine.load1_after"] = round(os.getloadavg()[0], 2)
    print(f"bench: Python {platform.python_version()}, load {load_before[0]:.2f} -> {os.getloadavg()[0]:.2f}")
    out_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"bench: wrote {out_path}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
