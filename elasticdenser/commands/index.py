"""``elasticdenser index``: encode a corpus once (full model, full width), merge, build one FAISS index per width.

Sharded use: run ``--shard i --num-shards n`` for every i (any machines, same --out folder or
copy ``chunks/`` together), then ``--merge`` once. A killed run resumes when re-run. Under
``torchrun --nproc_per_node N -m elasticdenser index ...`` each rank encodes shard RANK of
WORLD_SIZE (on its own GPU where there are GPUs), and rank 0 merges and builds the indexes once
every rank has finished (the ranks share the --out folder).
"""
from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import List

from elasticdenser.commands._common import add_data_dir, add_device, add_out, add_precision, add_progress
from elasticdenser.errors import InvalidInputError
from elasticdenser.operating_point import WIDTH_MULTIPLE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a corpus once and build one FAISS index per embedding width",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("collection", help="collection name (nq-sample, squad-sample, scifact, trec-dl, an ir_datasets id, or a path)")
    add_out(p, "experiment directory", required=True)
    add_data_dir(p)
    p.add_argument("--model", default=None,
                   help="model directory (default: all-MiniLM-L6-v2). A trained model (`elasticdenser train`) "
                   "encodes the documents with the document tower it records and becomes the experiment's query model")
    p.add_argument("--widths", default=None, help="comma-separated widths to index (default: the widths of the default points)")
    p.add_argument("--index-type", action="append", default=None, metavar="[WIDTH=]FACTORY",
                   help="FAISS factory string, for all widths or one (repeatable): Flat (default), HNSW32, 'IVF4096,PQ96'")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="embedding store dtype")
    p.add_argument("--batch-size", type=int, default=64)
    add_precision(p)
    p.add_argument("--chunk-size", type=int, default=16384, help="documents per resumable chunk")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="only merge the shards' chunks and build the indexes")
    p.add_argument("--train-size", type=int, default=262144, help="training sample for IVF/PQ indexes")
    p.add_argument("--force", action="store_true",
                   help="encode every chunk, merge and build every index again, even where they are current")
    p.add_argument("--remove-chunks", action="store_true", help="delete chunks/ after a successful merge (halves peak disk)")
    p.add_argument("--bm25", action="store_true", help="also build a BM25 index (bm25s) of the passages: the lexical "
                   "and fused first stages (search/evaluate --first-stage)")
    add_progress(p)
    add_device(p)
    p.set_defaults(func=run)


def _widths(spec: str, hidden: int) -> List[int]:
    """``--widths`` checked before any work: integers, multiples of 8, at most the hidden size."""
    try:
        widths = [int(w) for w in spec.split(",") if w.strip()]
    except ValueError:
        raise InvalidInputError(f"--widths must be comma-separated integers, got {spec!r}") from None
    for w in widths or [0]:
        if not WIDTH_MULTIPLE <= w <= hidden or w % WIDTH_MULTIPLE:
            raise InvalidInputError(f"--widths: {w} is not a multiple of {WIDTH_MULTIPLE} in {WIDTH_MULTIPLE}..{hidden}")
    return widths


#: a rank waits this long for the slowest rank's shard (gloo's 30-minute default is shorter than a corpus)
_RANK_TIMEOUT = timedelta(days=7)


def _torchrun(args: argparse.Namespace):
    """The process group when launched by torchrun with more than one rank (``--shard`` and
    ``--num-shards`` then come from RANK and WORLD_SIZE), else None."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if args.shard != 0 or args.num_shards != 1:
        raise InvalidInputError("--shard / --num-shards are set by torchrun (RANK / WORLD_SIZE); pass neither")
    from elasticdenser.training.distributed import setup_distributed

    dist = setup_distributed(timeout=_RANK_TIMEOUT)
    args.shard, args.num_shards = dist.rank, dist.world
    return dist


def run(args: argparse.Namespace) -> int:
    for flag in ("chunk_size", "batch_size", "train_size"):
        if getattr(args, flag) < 1:
            raise InvalidInputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    dist = _torchrun(args)
    try:
        return _run(args, dist)
    finally:
        if dist is not None and dist.owns_group:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace, dist) -> int:
    from elasticdenser.commands._common import pick_device, warn_slow_bf16
    from elasticdenser.index import build
    from elasticdenser.index import faiss_index as fi
    from elasticdenser.model.towers import load_towers

    if dist is not None and not dist.main and args.merge:
        return 0  # rank 0 merges
    device = dist.device if dist is not None and not args.device else pick_device(args.device)
    query_encoder, encoder = load_towers(args.model, device)  # encoder: the document tower
    warn_slow_bf16(args.precision, encoder.device)
    widths = _widths(args.widths, encoder.space.hidden_size) if args.widths else None
    if not args.merge:
        from elasticdenser.data import load_collection

        coll = load_collection(args.collection, args.data_dir)
        try:
            stats = build.encode_stage(encoder, coll.corpus, args.out, collection=coll.name, shard=args.shard,
                                       num_shards=args.num_shards, chunk_size=args.chunk_size,
                                       batch_size=args.batch_size, dtype=args.dtype, precision=args.precision,
                                       progress=not args.no_progress and (dist is None or dist.main),
                                       force=args.force, save_model_dir=False)
            print(f"shard {args.shard}/{args.num_shards}: encoded {stats['encoded_chunks']} chunk(s), "
                  f"{stats['skipped_chunks']} already done, {stats['passages']} passages in {stats['seconds']:.1f}s "
                  f"({stats['precision']}, {stats['backend']})")
        finally:
            if dist is not None:
                dist.barrier()  # every shard is written (or a rank failed and torchrun stops the group)
        if dist is not None and not dist.main:
            return 0
        if args.num_shards > 1 and dist is None:
            print(f"run the other shards, then: elasticdenser index {args.collection} --out {args.out} --merge", file=sys.stderr)
            return 0
        name = coll.name
    else:
        name = args.collection
    build.merge_stage(encoder, args.out, collection=name, remove_chunks=args.remove_chunks, force=args.force)
    # a trained model (one that records another document tower) becomes the query model; a plain
    # model is a document tower: an experiment that has a query model keeps it
    build.record_models(args.out, query_encoder, encoder, model_dir=args.model, replace=query_encoder is not encoder)
    widths = widths or query_encoder.space.widths(query_encoder.default_points())
    m = build.index_stage(args.out, widths, fi.parse_index_types(args.index_type, widths), force=args.force,
                          train_size=args.train_size)
    for w in widths:
        info = m["indexes"][str(w)]
        print(f"{info['file']}: {info['factory']}, {info['ntotal']} vectors, {info['bytes'] / 1e6:.1f} MB, "
              f"{info['build_seconds']:.1f}s")
    if args.bm25:
        from elasticdenser.index import manifest as mf
        from elasticdenser.index.bm25 import build_bm25

        section = build_bm25(args.out, progress=not args.no_progress)  # seconds per 100k passages: always fresh
        mf.update(args.out, bm25=section)
        print(f"bm25/: BM25 over {section['num_docs']} passages")
    return 0
