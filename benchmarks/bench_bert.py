"""Thin wrapper: ``python benchmarks/bench_bert.py [bench options]`` runs
``python -m blocksparse bench --suite bert [bench options]`` (the suite is
:mod:`blocksparse.bench.bert`; see ``python -m blocksparse bench --help``)."""
import sys

from blocksparse.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "bert", *sys.argv[1:]]))
