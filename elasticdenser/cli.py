"""The `elasticdenser` console script: one subcommand per module in elasticdenser.commands."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# Each name is a module elasticdenser.commands.<name> exposing `register(subparsers)`;
# the registered parser sets `func(args) -> int`.
COMMANDS = ["version", "data", "train", "index", "search", "evaluate", "profile", "simulate", "serve", "pipeline"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elasticdenser",
        description="Dense retrieval with an elastic query encoder (train, index, search, evaluate, route).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"elasticdenser.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not written yet must not break the others
            if exc.name != f"elasticdenser.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Known failure modes carry a message written for the user; no traceback.
        print(f"elasticdenser {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
