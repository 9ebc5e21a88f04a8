import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print the package and key dependency versions")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import faiss
    import torch
    import transformers

    import elasticdenser

    print(f"elasticdenser {elasticdenser.__version__}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, faiss {faiss.__version__}")
    return 0
