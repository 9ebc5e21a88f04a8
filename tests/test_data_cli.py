"""`elasticdenser data list|show|export` through the real CLI entry point."""
from __future__ import annotations

import json
import re

from elasticdenser.cli import main


def _counts(text: str) -> dict:
    return {m.group(1): int(m.group(2).replace(",", "")) for m in re.finditer(r"^\s+(\w+)\s+([\d,]+)$", text, re.M)}


def test_data_show_nq_sample(data_dir, capsys):
    assert main(["data", "show", "nq-sample", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nq-sample\n")
    counts = _counts(out)
    assert counts["documents"] == 4351 and counts["queries"] == 2655 and counts["qrels"] == 2655
    assert counts["queries_with_answers"] == 2655 and counts["held_out_questions"] == 3610


def test_data_show_env_json_and_query_pool(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("ELASTICDENSER_DATA", str(data_dir))
    assert main(["data", "show", "cranfield", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["name"], shown["documents"], shown["queries"], shown["qrels"]) == ("cranfield", 1400, 225, 1837)
    assert shown["skipped"] == {"code -1 judgments kept as grade 0 (non-relevant)": 225}
    assert main(["data", "show", "query-pool", "--exclude", "squad-sample", "--drop-overlap", "--json"]) == 0
    pool = json.loads(capsys.readouterr().out)
    assert (pool["queries"], pool["dropped"]) == (17583, 3)


def test_data_list_export_and_errors(data_dir, capsys, tmp_path, monkeypatch):
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("nq-sample", "squad-sample", "scifact", "trec-dl", "cacm", "cranfield", "climate-fever", "query-pool"):
        assert re.search(rf"^{name}\s", listed, re.M)
    assert main(["data", "export", "nq-sample", str(tmp_path / "out"), "--format", "jsonl", "--data-dir", str(data_dir)]) == 0
    assert "corpus.jsonl: 4,351 records" in capsys.readouterr().out
    assert sum(1 for _ in open(tmp_path / "out/qrels.trec")) == 2655
    # user errors: one line, exit 2, no traceback
    monkeypatch.delenv("ELASTICDENSER_DATA", raising=False)
    assert main(["data", "show", "nq-sample"]) == 2
    err = capsys.readouterr().err
    assert "ELASTICDENSER_DATA" in err and "Traceback" not in err
    assert main(["data", "show", "query-pool", "--exclude", "squad-sample", "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "squad-sample" in err and "drop_overlap" in err
