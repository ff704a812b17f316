"""``python -m gateway``: command-line tools that start nothing.

``check FILE [FILE...]`` loads each configuration the way the service would
(like ``haproxy -c``) and says what is wrong.  Running the gateway itself is
``twistd gateway``; more subcommands can join ``_COMMANDS`` here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from gateway import config


def check(files: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Validate each file; 0 if all load, 1 if any has a problem.

    Success prints ``FILE: OK`` and any warnings to ``out``; every problem goes
    to ``err``, one per line, so that all files are checked in one run.
    """
    status = 0
    for path in files:
        try:
            loaded = config.load(path)
        except config.ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=err)
            status = 1
            continue
        print(f"{path}: OK", file=out)
        for warning in loaded.warnings:
            print(warning, file=out)
    return status


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="an INI configuration")


def _check(args: argparse.Namespace) -> int:
    return check(args.files, sys.stdout, sys.stderr)


#: name -> (summary, add its arguments, run it and return the exit status)
_COMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "check": (
        "validate configuration files without starting anything",
        _check_arguments,
        _check,
    ),
}


def _arguments() -> argparse.ArgumentParser:
    """The command line: one subparser per entry of ``_COMMANDS``."""
    parser = argparse.ArgumentParser(prog="python -m gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, add_arguments, _) in _COMMANDS.items():
        add_arguments(commands.add_parser(name, help=summary, description=summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; the exit status it returns (argparse exits 2 on misuse)."""
    args = _arguments().parse_args(argv)
    return _COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
