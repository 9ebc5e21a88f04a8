"""The README's promises: CI runs exactly its test command, and every command it shows parses."""
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in lines if "pytest" in line and line.startswith("python3 -m venv")]
    assert len(commands) == 1, "expected exactly one install+test command line in .ci/run"
    return commands[0]


def _readme_cli_commands():
    """Every ``elasticdenser ...`` invocation in the README's shell blocks, as argument lists."""
    out, block, in_shell = [], [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_shell = line.strip() in ("```bash", "```sh")
            continue
        if in_shell:
            block.append(line)
    # join continued lines; the loop variable of the sharded-encoding example stands for shard 0
    script = "\n".join(block).replace("\\\n", " ").replace("$i", "0")
    for line in script.splitlines():
        for part in line.replace("&&", ";").split(";"):
            words = [w for w in shlex.split(part, comments=True) if w != "&"]
            starts = [i for i, w in enumerate(words) if w.endswith("bin/elasticdenser") or w == "elasticdenser"]
            if starts:
                out.append(words[starts[0] + 1:])
    return out


def test_ci_runs_the_readme_test_command():
    assert _ci_command() in (REPO / "README.md").read_text()


def test_every_readme_command_parses():
    """A renamed flag, a removed subcommand or a command module that no longer imports fails here."""
    from elasticdenser.cli import build_parser

    commands = _readme_cli_commands()
    assert len(commands) >= 5 and any(c[0] == "pipeline" for c in commands)
    parser = build_parser()
    for args in commands:
        try:
            ns = parser.parse_args(args)
        except SystemExit:  # argparse's way of saying no
            pytest.fail(f"README command does not parse: elasticdenser {' '.join(args)}")
        assert callable(ns.func)
