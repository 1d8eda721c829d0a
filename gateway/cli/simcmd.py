"""``gatewayctl sim``: run or control the TEP simulator (everything after ``sim`` goes to ``python -m simulator``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    sim = subparsers.add_parser("sim", help="run or control the TEP simulator (see `gatewayctl sim --help`)",
                                add_help=False)
    sim.add_argument("rest", nargs=argparse.REMAINDER)
    sim.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from simulator.cli import main as sim_main

    return int(sim_main(args.rest))
