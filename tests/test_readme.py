"""The README's promises: CI runs exactly its test command."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ci_command() -> str:
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    commands = [line for line in lines if "pytest" in line and line.startswith("python3 -m venv")]
    assert len(commands) == 1, "expected exactly one install+test command line in .ci/run"
    return commands[0]


def test_ci_runs_the_readme_test_command():
    assert _ci_command() in (REPO / "README.md").read_text()


def test_readme_main_job_uses_a_registered_subcommand():
    from elasticdenser.cli import COMMANDS

    readme = (REPO / "README.md").read_text()
    main_job = next(line for line in readme.splitlines() if ".venv/bin/elasticdenser " in line)
    sub = main_job.split(".venv/bin/elasticdenser ")[1].split()[0]
    assert sub in COMMANDS
