"""Sphinx configuration for blocksparse.

Build: ``sphinx-build -W -b html docs docs/_build`` from the repository root
(``pip install -e ".[docs]"`` first, or build the extension in place).
Doctests of the pages: ``sphinx-build -b doctest docs docs/_build/doctest``
(the test suite also runs them, see tests/test_docs.py).
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# A source checkout with an in-place build is importable without installing.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import blocksparse  # noqa: E402
import render_results  # noqa: E402
import render_serve  # noqa: E402

project = "blocksparse"
author = "the blocksparse developers"
copyright = "2026, the blocksparse developers"
version = release = blocksparse.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "_generated", "results", "Thumbs.db", ".DS_Store"]
html_static_path = ["_static"]
html_theme = "alabaster"
html_theme_options = {"description": "Block-sparse INT8 products for Transformers on x86 CPUs",
                      "fixed_sidebar": True}
html_title = f"blocksparse {release}"
default_role = "obj"

autosummary_generate = True
autosummary_ignore_module_all = False   # a module's __all__ is its public API
autodoc_member_order = "bysource"
autodoc_typehints = "none"              # types live in the numpydoc sections
numpydoc_show_class_members = False     # autosummary/autodoc list the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

doctest_global_setup = """
import numpy as np
import blocksparse
"""

# ---- build-time content ---------------------------------------------------------------

GENERATED = HERE / "_generated"
GENERATED.mkdir(exist_ok=True)

# Results tables and plots of the performance page (a note when there are none).
render_results.render()
render_serve.render()  # the deployment page's serving results


def _write_if_changed(path, text):
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def _cli_help():
    """The --help text of every command, so the CLI page never goes stale."""
    os.environ["COLUMNS"] = "90"  # argparse wraps to the terminal width
    from blocksparse._cli import build_parser
    parser = build_parser()
    _write_if_changed(GENERATED / "cli_main.txt", parser.format_help())
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            _write_if_changed(GENERATED / f"cli_{name}.txt", sub.format_help())


_cli_help()

# The nn page shows its API only once blocksparse.nn has public names.
try:
    import blocksparse.nn as _nn
    if getattr(_nn, "__all__", None):
        tags.add("have_nn")  # noqa: F821  (`tags` is provided by Sphinx)
except ImportError:
    pass
