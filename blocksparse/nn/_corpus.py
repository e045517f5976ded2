"""Real English text without downloads: the docstrings of installed packages.

Pruning with data, distillation and the quality report need natural
language.  Every machine that runs this package has some: the docstrings of
Python's standard library and of NumPy and SciPy (dependencies).  They are
read from the source files with :mod:`ast` (nothing is imported), split
into paragraphs, kept only where a paragraph reads as prose (no code,
tables, parameter lists or markup), and deduplicated.

Each text goes to one split by a hash of its normalized form, so the splits
never overlap, and a text keeps its split whatever else is installed:
``"eval"`` (20 % of the hash space), ``"calibration"`` (30 %) and ``"train"``
(50 %).  Within a split, texts are ordered by that hash: a deterministic
shuffle, so the first n texts are a fair sample of the sources.
"""
import ast
import functools
import hashlib
import json
import os
import re
import sys
import sysconfig
import tempfile
import warnings

__all__ = ["offline_texts"]

SPLITS = {"eval": (0, 20), "calibration": (20, 50), "train": (50, 100)}
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
              "turtledemo", "ensurepip", "__pycache__", "tkinter", "_vendor", "vendored",
              "_lib", "array_api_compat", "pydoc_data"}
_MIN_WORDS, _MAX_WORDS = 6, 60
_EXTRACTOR = 2  # bump when the extraction rules change (names the cache file)
_ROLE = re.compile(r":[a-z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]*)``|`([^`]*)`")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?[,.;:!?)]*$|\(?[A-Za-z]+[,.;:!?)]*$")
_CODEISH = re.compile(r">>>|\.\.\.|::|==|!=|<=|>=|\{|\}|\[|\]|\\|#|\$|http|www\.|@|\|"
                      r"|\w\(|^\s*[-*+]\s|^\s*\d+[.)]\s|\s\d+\.\d|=")


def _sources():
    """Root directories to read: the standard library, NumPy, SciPy."""
    import numpy
    import scipy
    roots = [sysconfig.get_paths()["stdlib"], os.path.dirname(numpy.__file__),
             os.path.dirname(scipy.__file__)]
    return [r for r in roots if r and os.path.isdir(r)]


def _python_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith((".", "config-")))
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield os.path.join(dirpath, name)


def _docstrings(path):
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError, RecursionError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "add_newdoc":
            # numpy keeps the docstrings of its C functions as add_newdoc(...) arguments
            for arg in node.args[2:]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield arg.value


def _prose(paragraph):
    """The paragraph as one line of plain prose, or None if it is not prose."""
    lines = paragraph.splitlines()
    while len(lines) > 2 and set(lines[1].strip()) <= set("-=~^") and lines[1].strip():
        lines = lines[2:]  # a section header ("Notes" + underline) opens the paragraph
    if any(line.startswith((" ", "\t")) or set(line.strip()) <= set("-=~^*+_#") or
           " : " in line for line in lines):
        return None  # literal blocks, section underlines, numpydoc parameter lines
    text = " ".join(line.strip() for line in lines)
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)
    if _CODEISH.search(text) or not text[:1].isupper() or not text.endswith((".", "?", "!")):
        return None
    words = text.split()
    if not _MIN_WORDS <= len(words) <= _MAX_WORDS:
        return None
    plain = sum(1 for w in words if _WORD.match(w) and not any(c.isdigit() for c in w)
                and "_" not in w and not (any(c.isupper() for c in w[1:])))
    if plain < 0.9 * len(words):
        return None
    return text


def _key(text):
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def _extract(roots):
    """{hash: text} over every source, first occurrence wins."""
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like in old sources
        for root in roots:
            for path in _python_files(root):
                for doc in _docstrings(path):
                    for para in re.split(r"\n\s*\n", doc):
                        text = _prose(para.strip())
                        if text is not None:
                            seen.setdefault(_key(text), text)
    return seen


def _cache_file(roots):
    """Where the extracted texts of these sources are kept between runs."""
    import numpy
    import scipy
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = json.dumps([_EXTRACTOR, sys.version, numpy.__version__, scipy.__version__, roots])
    name = f"offline-texts-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.json"
    return os.path.join(base, "blocksparse", name)


@functools.lru_cache(maxsize=1)
def _all_texts():
    """{hash: text}: from the cache file if there is one, else read and cached.

    The texts are a pure function of the installed sources, which the cache
    file's name identifies (Python, NumPy and SciPy versions and paths).
    """
    roots = _sources()
    path = _cache_file(roots)
    try:
        with open(path, encoding="utf-8") as f:
            texts = json.load(f)
        if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
            return {_key(t): t for t in texts}
    except (OSError, ValueError):
        pass
    seen = _extract(roots)
    try:  # a cache that cannot be written only costs time
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sorted(seen.values()), f)
        os.replace(tmp, path)
    except OSError:
        pass
    return seen


def offline_texts(split, n=None):
    """Real English texts for calibration, training or evaluation, offline.

    Paragraphs of prose from the docstrings of Python's standard library,
    NumPy and SciPy, read from their source files (no downloads, nothing
    imported), deduplicated.  A text's split follows from a hash of its
    normalized form, so the three splits never share a text; within a
    split the order is that hash order, deterministic for a given set of
    installed sources.

    Parameters
    ----------
    split : {"eval", "calibration", "train"}
        About 20 %, 30 % and 50 % of the texts.  Evaluation texts are
        held out: never use them to prune or train.
    n : int, optional
        Return the first `n` texts of the split (all by default).

    Returns
    -------
    list of str
        One paragraph per item, one line each, 6 to 60 words.

    Raises
    ------
    ValueError
        For an unknown `split`, a negative `n`, or if the split holds fewer
        than `n` texts.

    Notes
    -----
    The first call reads the sources (several seconds) and keeps the
    texts in ``$XDG_CACHE_HOME/blocksparse`` (``~/.cache/blocksparse``),
    under a name that changes with the Python, NumPy and SciPy versions;
    later calls read that file.  On CPython 3.11 with NumPy 2 and SciPy 1.14 the splits
    hold a few thousand texts each.

    Examples
    --------
    >>> from blocksparse.nn import offline_texts
    >>> texts = offline_texts("eval", n=1000)              # doctest: +SKIP
    >>> set(texts).isdisjoint(offline_texts("calibration"))  # doctest: +SKIP
    True
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n must be None or a non-negative int, got {n!r}")
    lo, hi = SPLITS[split]
    texts = _all_texts()
    chosen = [texts[k] for k in sorted(texts) if lo <= int(k[:8], 16) % 100 < hi]
    if n is None:
        return chosen
    if len(chosen) < n:
        raise ValueError(f"the {split!r} split holds {len(chosen)} texts on this machine, "
                         f"fewer than n = {n}")
    return chosen[:n]
