"""Thin wrapper: ``python benchmarks/bench_spmm_float.py [bench options]`` runs
``python -m blocksparse bench --suite float [bench options]`` (the suite is
:mod:`blocksparse.bench.spmm_float`; see ``python -m blocksparse bench --help``)."""
import sys

from blocksparse.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "float", *sys.argv[1:]]))
