"""Helpers for the research scripts in ``benchmarks/``.

The benchmark suites and their helpers live in the package
(:mod:`blocksparse.bench`); scripts here put ``benchmarks/`` on ``sys.path``
and import this module for the same helpers plus :func:`gops` and
:func:`report`.
"""
import json
import sys

from blocksparse.bench._common import (flush_cache, format_table, load_average,  # noqa: F401
                                       machine_description, time_call, write_json)


def gops(M, K, N, seconds, density=1.0):
    """``(effective, actual)`` GOPS: ``2MNK / t`` and the same times `density`.

    Effective GOPS compare with dense libraries (the work a dense product
    would do); actual GOPS count only the stored blocks' multiply-adds, to
    compare with the machine's compute ceiling.
    """
    eff = 2.0 * M * K * N / seconds / 1e9
    return eff, eff * density


def report(result, json_path=None):
    """Print a result's machine description and table; write its JSON if asked."""
    print(json.dumps(result["machine"], indent=1), file=sys.stdout)
    print(result["table"])
    if json_path:
        write_json(json_path, result)
