"""The error contract of the CLI: a user error is one line naming what is wrong and exit 2, found
before any long work; anything else keeps its traceback."""
from __future__ import annotations

import pytest

from elasticdenser.cli import main
from elasticdenser.errors import ElasticDenserError, InvalidInputError


@pytest.mark.parametrize("assignment, message", [
    ("steps=true", "steps must be an integer"),
    ("steps=2.5", "steps must be an integer"),
    ("lr=fast", "lr must be a number"),
    ("bf16=3", "bf16 must be a boolean"),
    ("max_documents=many", "max_documents must be an integer"),
])
def test_train_config_values_of_the_wrong_type(assignment, message, capsys):
    assert main(["train", "--set", assignment, "--print-config"]) == 2
    assert message in capsys.readouterr().err


def test_invalid_yaml_and_toml_name_the_file(tmp_path, capsys):
    bad = tmp_path / "cfg.yaml"
    bad.write_text("steps: 10\nlr: [1e-3\n")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "invalid YAML" in err and "line" in err
    bad = tmp_path / "cfg.toml"
    bad.write_text("steps = \n")
    assert main(["train", "--config", str(bad), "--print-config"]) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_bad_trace_parameters():
    from elasticdenser.serve.traces import parse_trace

    with pytest.raises(InvalidInputError, match="rate='fast' is not a number"):
        parse_trace("poisson:rate=fast,duration=5")
    with pytest.raises(InvalidInputError, match="duration='abc'"):
        parse_trace("poisson:rate=3,duration=abc")


def test_index_flags_are_checked_before_any_encoding(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    from elasticdenser.index import build

    monkeypatch.setattr(build, "encode_stage", lambda *a, **k: pytest.fail("encoding started"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "a passage"}\n')
    base = ["index", str(corpus), "--out", str(tmp_path / "exp"), "--model", str(tiny_bert_dir)]
    assert main(base + ["--widths", "abc"]) == 2
    assert "--widths must be comma-separated integers" in capsys.readouterr().err
    assert main(base + ["--widths", "60"]) == 2  # not a multiple of 8
    assert "multiple of 8" in capsys.readouterr().err
    assert main(base + ["--chunk-size", "0"]) == 2
    assert "--chunk-size must be >= 1" in capsys.readouterr().err


def test_only_user_errors_become_one_line(monkeypatch, capsys):
    """A bug or an exhausted machine keeps its traceback; --debug shows one for user errors too."""
    from elasticdenser.commands import version

    def boom(args):
        raise RuntimeError("CUDA out of memory")  # what torch raises: not a user error

    monkeypatch.setattr(version, "run", boom)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["version"])

    def user_error(args):
        raise InvalidInputError("bad flag value")

    monkeypatch.setattr(version, "run", user_error)
    assert main(["version"]) == 2 and "bad flag value" in capsys.readouterr().err
    with pytest.raises(ElasticDenserError):
        main(["--debug", "version"])
