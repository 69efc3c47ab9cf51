"""The ``odrive`` command. Each subcommand lives in its own module with ``add_parser(subparsers)``,
which registers a parser whose ``run`` default handles the parsed arguments."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES = (
    "sim.cli",  # odrive sim
    "odrive.server.cli",  # odrive serve
    "odrive.profiling.cli",  # odrive profile
    "odrive.profiling.probe_cli",  # odrive probe
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="odrive", description="simulator-first paged-attention inference")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # that subcommand is not part of this checkout
                continue
            raise
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
