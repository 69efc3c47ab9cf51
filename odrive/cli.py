"""The ``odrive`` command: ``odrive sim ...`` (more subcommands register here)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="odrive", description="simulator-first paged-attention inference")
    sub = parser.add_subparsers(dest="command", required=True)
    from sim import cli as sim_cli

    sim_parser = sub.add_parser("sim", help="simulate a trace or synthetic workload", description=sim_cli.__doc__)
    sim_cli.add_arguments(sim_parser)
    sim_parser.set_defaults(run=sim_cli.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
