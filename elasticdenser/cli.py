"""The `elasticdenser` console script: one subcommand per module in elasticdenser.commands.

Error contract: an :class:`~elasticdenser.errors.ElasticDenserError` (bad input, a missing file, an
inconsistent experiment) prints one line and exits 2 (``--debug`` shows its traceback too); any
other exception is a bug or an exhausted machine and keeps its traceback (exit 1); Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from elasticdenser.errors import ElasticDenserError

__all__ = ["COMMANDS", "build_parser", "main"]

# Each name is a module elasticdenser.commands.<name> exposing `register(subparsers)`;
# the registered parser sets `func(args) -> int`. A module that fails to import is an error.
COMMANDS = ["version", "data", "train", "train-ranker", "index", "search", "evaluate", "profile", "simulate", "serve", "pipeline"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elasticdenser",
        description="Dense retrieval with an elastic query encoder (train, index, search, evaluate, route).",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"elasticdenser.commands.{name.replace('-', '_')}").register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ElasticDenserError as exc:
        if args.debug:
            raise
        # Known failure modes carry a message written for the user; no traceback.
        print(f"elasticdenser {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
