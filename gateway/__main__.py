"""``python -m gateway``: command-line tools that start nothing.

``check FILE [FILE...]`` loads each configuration the way the service would
(like ``haproxy -c``) and says what is wrong.  Running the gateway itself is
``twistd gateway``; more subcommands can join ``_COMMANDS`` here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

#: Set while re-running under the checkout's virtualenv, so it happens once.
_REEXEC_ENV = "GATEWAY_REEXEC"


def _checkout_python() -> str | None:
    """The ``.venv`` interpreter of the checkout this package runs from, if any.

    README installs the gateway into ``.venv`` at the top of the checkout;
    ``python3 -m gateway`` from there with a bare interpreter (no Twisted)
    would otherwise fail on the first import.
    """
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.path.join(top, ".venv")
    candidate = os.path.join(venv, "bin", "python")
    # Compare environments, not binaries: a venv's python is a link to the base one.
    if os.path.exists(candidate) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        return candidate
    return None


def _ensure_twisted() -> None:
    """Run under an interpreter that has the gateway's dependencies, or say how to get one."""
    try:
        import twisted.internet  # noqa: F401
    except ImportError:
        python = _checkout_python()
        if python is not None and not os.environ.get(_REEXEC_ENV):
            os.environ[_REEXEC_ENV] = "1"
            os.execv(python, [python, "-m", "gateway", *sys.argv[1:]])
        print(
            "gateway needs its dependencies (Twisted, pyOpenSSL): install it first, "
            "e.g. python3 -m venv .venv && .venv/bin/pip install .",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


_ensure_twisted()

from gateway import config  # noqa: E402  (after the interpreter check above)


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
