"""``gatewayctl sim``: run or control the TEP simulator (everything after ``sim`` goes to ``python -m simulator``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    # No option prefix of its own: every word after `sim` (--speed, --help...) is handed to the simulator's CLI
    # instead of being refused as an unknown gatewayctl option.
    sim = subparsers.add_parser("sim", help="run or control the TEP simulator (see `gatewayctl sim --help`)",
                                add_help=False, prefix_chars="\x01")
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from simulator.cli import CONTROL_COMMANDS
    from simulator.cli import main as sim_main

    rest = list(args.rest)
    # `gatewayctl --json sim status`: the common --json lands before `sim`; the control commands take it too.
    if getattr(args, "json", False) and any(a in CONTROL_COMMANDS for a in rest) and "--json" not in rest:
        rest.append("--json")
    return int(sim_main(rest))
