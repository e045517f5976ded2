"""Thin wrapper: ``python benchmarks/vnni_ceiling.py [--threads 1,2] [--quick]`` prints the
ceilings of :mod:`blocksparse.bench.ceiling` (vpdpbusd, FMA, bandwidth), measured by the
probes compiled into the package (``src/probe/``)."""
import sys

from blocksparse.bench.ceiling import main

if __name__ == "__main__":
    sys.exit(main())
