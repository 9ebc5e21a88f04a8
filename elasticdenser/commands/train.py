"""`elasticdenser train`: elastic training of the query tower against fixed document embeddings."""
from __future__ import annotations

import argparse

from elasticdenser.commands._common import add_data_dir, add_out, add_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="elastic training: every query operating point learns to search the full model's document embeddings",
        description=(
            "Train the elastic query encoder. Settings come from --config (YAML or TOML; every key of "
            "elasticdenser.training.config.TrainConfig), then the explicit flags, then --set KEY=VALUE. "
            "The resolved config is saved as train_config.yaml next to the checkpoints and the model. "
            "Multi-process: torchrun --nproc_per_node N -m elasticdenser train ..."
        ),
    )
    p.add_argument("--config", help="YAML (.yaml/.yml) or TOML (.toml) train config")
    add_out(p, "run directory: checkpoints, model/, metrics.jsonl (default: the config's output_dir)")
    p.add_argument("--model", help="starting encoder directory (default: all-MiniLM-L6-v2)")
    add_data_dir(p)
    p.add_argument("--collection", help="corpus whose document embeddings stay fixed (default nq-sample)")
    p.add_argument("--source", action="append", default=None, metavar="KIND[:PATH][@WEIGHT]",
                   help="a training-question source (repeatable): pool, pseudo[:span|sentence|title], file:PATH, hf:PATH; "
                   "@WEIGHT = its share of the stream (default: pseudo-queries of the corpus, 1:1 with the built-in "
                   "pool if present)")
    p.add_argument("--queries", action="append", default=None, metavar="FILE[@WEIGHT]",
                   help="an unlabeled query log (repeatable): TREC topics, jsonl, tsv, one query per line, or a "
                   "datasets file/folder; added to the --source list (alone, it is the only source)")
    p.add_argument("--experiment", help="an indexed experiment whose document embeddings training reads "
                   "instead of encoding the corpus again (same document tower)")
    p.add_argument("--mode", choices=["frozen", "joint"], help="document tower: frozen (default) or joint first")
    p.add_argument("--sampling", choices=["sandwich", "fixed"], help="operating points per step")
    p.add_argument("--points", help="comma-separated operating points (default: the encoder's default points)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for the student forward")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in the output dir")
    add_progress(p)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="any other config key, e.g. distill_weight=0")
    p.add_argument("--print-config", action="store_true", help="print the resolved config (YAML) and exit")
    p.set_defaults(func=run)


_FLAGS = {
    "out": "output_dir",
    "model": "model",
    "data_dir": "data_dir",
    "collection": "collection",
    "mode": "mode",
    "sampling": "sampling",
    "points": "points",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "seed": "seed",
    "bf16": "bf16",
    "experiment": "experiment",
}


def resolve_config(args: argparse.Namespace):
    from elasticdenser.training.config import TrainConfig

    cfg = TrainConfig.load(args.config) if args.config else TrainConfig()
    changes = {key: getattr(args, attr) for attr, key in _FLAGS.items() if getattr(args, attr, None) is not None}
    if changes.get("points") is not None:
        changes["points"] = [x.strip() for x in changes["points"].split(",") if x.strip()]
    if args.source is not None or args.queries:
        sources = list(args.source) if args.source is not None else list(cfg.sources or [])
        changes["sources"] = sources + [f"file:{q}" for q in args.queries or []]
    if args.no_progress:
        changes["progress"] = False
    cfg = cfg.replace(**changes) if changes else cfg
    if args.set:
        cfg = cfg.override(args.set)
    return cfg


def run(args: argparse.Namespace) -> int:
    import logging

    import yaml

    cfg = resolve_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from elasticdenser.training.loop import train

    result = train(cfg, resume=not args.no_resume)
    if result.stopped_early:
        return 0
    losses = ", ".join(f"{k} {result.first_losses.get(k, float('nan')):.4f} -> {v:.4f}" for k, v in result.last_losses.items())
    print(f"trained {result.steps} steps in {result.wall_time_s:.0f} s ({losses})")
    print(f"model: {result.model_dir}   metrics: {result.metrics_path}")
    return 0
