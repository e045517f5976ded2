"""Thin wrapper: ``python benchmarks/bench_spmm_int8.py [bench options]`` runs
``python -m blocksparse bench --suite int8 [bench options]`` (the suite is
:mod:`blocksparse.bench.spmm_int8`; see ``python -m blocksparse bench --help``)."""
import sys

from blocksparse.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "int8", *sys.argv[1:]]))
