"""`elasticdenser train-ranker`: an ElasticRanker that reranks an experiment's first stage."""
from __future__ import annotations

import argparse

from elasticdenser.commands._common import add_data_dir, add_out, add_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ranker",
        help="train an elastic cross-encoder (ElasticRanker) on the candidates of an experiment's retriever",
        description=(
            "Fine-tunes a full-size teacher on labelled lists (the collection's training half: positives against "
            "the retriever's hard negatives; skipped with --teacher), then distils every ranker point from it "
            "(listwise KL + the labels). Settings: --config (YAML/TOML, every key of "
            "elasticdenser.training.ranker.RankerConfig), then the flags, then --set KEY=VALUE; the resolved config "
            "is saved as ranker_config.yaml. A run started again with the same --out resumes."
        ),
    )
    p.add_argument("experiment", help="the first stage: an indexed experiment over the collection's corpus")
    p.add_argument("--collection", help="labelled training half + corpus (default squad-sample-test)")
    p.add_argument("--config", help="YAML or TOML ranker config")
    add_out(p, "run directory: checkpoints/, teacher/, model/ (default: the config's output_dir)")
    p.add_argument("--model", help="start: an HF cross-encoder, a saved ranker, or an encoder (new head); "
                   "default all-MiniLM-L6-v2")
    p.add_argument("--teacher", help="a trained cross-encoder to distil from (skips the teacher phase)")
    add_data_dir(p)
    p.add_argument("--teacher-steps", type=int)
    p.add_argument("--steps", type=int, help="elastic-phase steps")
    p.add_argument("--points", help="comma-separated ranker points (default: the ranker's defaults)")
    add_progress(p)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other config key, e.g. list_size=8")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.set_defaults(func=run)


_FLAGS = {"experiment": "experiment", "collection": "collection", "out": "output_dir", "model": "model",
          "teacher": "teacher", "data_dir": "data_dir", "teacher_steps": "teacher_steps", "steps": "steps",
          "points": "points"}


def run(args: argparse.Namespace) -> int:
    import logging

    import yaml

    from elasticdenser.training.ranker import RankerConfig, train_ranker

    cfg = RankerConfig.load(args.config) if args.config else RankerConfig()
    changes = {key: getattr(args, attr) for attr, key in _FLAGS.items() if getattr(args, attr, None) is not None}
    cfg = cfg.replace(**changes)
    if args.set:
        cfg = cfg.override(args.set)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from elasticdenser.searcher import Searcher

    model = train_ranker(cfg, Searcher.open(cfg.experiment), progress=not args.no_progress)
    print(f"ranker: {model}")
    return 0
