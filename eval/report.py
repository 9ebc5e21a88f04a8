"""The metrics table: printed as markdown, saved as JSON and markdown."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

from elasticdenser.atomic import write_json, write_text

__all__ = ["LABELS", "ORDER", "RUNS_SUFFIX", "markdown_table", "save_report"]

LABELS = {
    "point": "point", "params_m": "params (M)", "latency_ms": "batch latency (ms)", "qps": "QPS",
    "ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@20": "R@20", "recall@100": "R@100", "map": "MAP",
    "answer@1": "Ans@1", "answer@5": "Ans@5", "answer@20": "Ans@20", "answer@100": "Ans@100",
}
#: ``{report}-runs/``: the folder of a report's TREC runs (``evaluate --save-runs``), numbered with it
RUNS_SUFFIX = "-runs"
ORDER = ["point", "params_m", "latency_ms", "qps", "ndcg@10", "mrr@10", "recall@20", "recall@100", "map",
         "answer@1", "answer@5", "answer@20", "answer@100"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(rows: List[dict], columns: Optional[Sequence[str]] = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(columns) if columns else [c for c in ORDER if any(c in r for r in rows)]
    cols += [c for r in rows for c in r if c not in cols and c != "queries"]
    cols = list(dict.fromkeys(cols))
    head = "| " + " | ".join(LABELS.get(c, c) for c in cols) + " |"
    sep = "|" + "|".join("---" if c == "point" else "---:" for c in cols) + "|"
    body = ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def save_report(out_dir: "str | Path", rows: List[dict], meta: Dict, comparison=None, name: str = "metrics") -> Dict[str, Path]:
    """Write ``{name}.json`` and ``{name}.md`` in ``out_dir``; returns their paths.

    Earlier results are never replaced: when ``{name}.json``, ``.md`` or its runs folder exists, the
    report goes to the first free ``{name}-2``, ``{name}-3``, ... (the returned paths say where).
    """
    out_dir = Path(out_dir)
    base, n = name, 1
    while any((out_dir / f"{name}{end}").exists() for end in (".json", ".md", RUNS_SUFFIX)):
        n += 1
        name = f"{base}-{n}"
    md = markdown_table(rows)
    title = meta.get("collection", "")
    text = f"# Metrics{' on ' + title if title else ''}\n\n{md}"
    if comparison is not None:
        text += "\n## Statistical comparison (ranx)\n\n```\n" + str(comparison) + "\n```\n"
    payload = {"meta": meta, "rows": rows}
    if comparison is not None:
        try:
            payload["comparison"] = comparison.to_dict()
        except Exception:
            payload["comparison"] = str(comparison)
    write_json(out_dir / f"{name}.json", payload)
    write_text(out_dir / f"{name}.md", text)
    return {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
