"""The ``odrive`` command. Each subcommand lives in its own module with ``add_parser(subparsers)``,
which registers a parser whose ``run`` default handles the parsed arguments. A user error is one line on stderr
and exit status 2 (``odrive.cli_errors``; ``--debug`` shows the traceback)."""

from __future__ import annotations

import importlib
import sys

from odrive.cli_errors import CLIParser, cli_main

SUBCOMMAND_MODULES = (
    "sim.cli",  # odrive sim
    "odrive.server.cli",  # odrive serve
    "odrive.generate_cli",  # odrive generate
    "odrive.profiling.cli",  # odrive profile
    "odrive.profiling.probe_cli",  # odrive probe
    "odrive.bench.cli",  # odrive bench
    "odrive.bench.compare",  # odrive compare
)


@cli_main("odrive")
def main(argv: list[str] | None = None) -> int:
    parser = CLIParser(prog="odrive", description="simulator-first paged-attention inference")
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
