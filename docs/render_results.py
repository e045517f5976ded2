"""Turn benchmark JSON files into reStructuredText for the performance page.

    python docs/render_results.py [RESULTS_DIR] [OUTPUT.rst]

Reads every ``*.json`` in ``docs/results/`` (what ``python -m blocksparse
bench`` writes, or a single suite dict from one suite's ``run()``) and writes
``docs/_generated/results.rst``: per file, the machine description, one table
per suite (case, blocksparse's min / median, the best peer and its min /
median, the paired speedup, the fraction of the measured ceiling), the
suite's "quiet machine?" note, and the sparsity from which blocksparse beats
the best peer for each shape.  The plot next to a JSON file (same stem,
``.png``) is copied to ``docs/_generated/`` and embedded; without one, the
figure is drawn from the JSON with :mod:`blocksparse.bench.plot` when
matplotlib is installed; else the checkout's ``bench-results/speedup.png`` is
used.  With no results it writes a short note, so the docs always build.

Plain Python (no Sphinx): ``docs/conf.py`` calls :func:`render` on every build.
"""
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
OUTPUT = HERE / "_generated" / "results.rst"
BENCH_PNG = HERE.parent / "bench-results" / "speedup.png"

MACHINE_KEYS = (("cpu", "CPU"), ("logical_cpus", "logical CPUs"), ("platform", "platform"),
                ("python", "Python"), ("numpy", "NumPy"), ("scipy", "SciPy"),
                ("isa_in_use", "ISA in use"), ("num_threads", "threads"),
                ("openmp_runtime", "OpenMP runtime"))


def _fmt_time(t):
    if not isinstance(t, (int, float)):
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1.0:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def _fmt_speedup(s):
    return f"{s:.2f}x" if isinstance(s, (int, float)) else "-"


def _cell(text):
    """A list-table cell: one line, no markup surprises."""
    text = str(text).replace("\n", " ").strip()
    for ch in "*`|_":
        text = text.replace(ch, "\\" + ch)
    return text or "-"


def _list_table(header, rows, title=None, indent=""):
    out = [f"{indent}.. list-table::" + (f" {title}" if title else ""),
           f"{indent}   :header-rows: 1", ""]
    for row in [header] + rows:
        out.append(f"{indent}   * - {_cell(row[0])}")
        out.extend(f"{indent}     - {_cell(c)}" for c in row[1:])
    out.append("")
    return out


def _heading(text, char):
    return [text, char * len(text), ""]


def _shape(rec):
    if rec.get("shape") is not None:
        s = rec["shape"]
        return "x".join(map(str, s)) if isinstance(s, (list, tuple)) else str(s)
    if rec.get("M") is not None and rec.get("K") is not None:
        return f"{rec['M']}x{rec['K']}"
    return None


def crossover(records):
    """{shape (and thread count): lowest sparsity with speedup >= 1, or None}."""
    by_shape = {}
    several_threads = len({r.get("threads") for r in records}) > 1
    for r in records:
        shape, s, sp = _shape(r), r.get("sparsity"), r.get("speedup")
        if shape is not None and several_threads:
            shape += f", {r.get('threads')} thread(s)"
        if shape is None or not isinstance(s, (int, float)) or not isinstance(sp, (int, float)):
            continue
        best = by_shape.setdefault(shape, None)
        if sp >= 1.0 and (best is None or s < best):
            by_shape[shape] = s
    return by_shape


def _min_med(rec, which):
    """``"min / median"`` of blocksparse (``which`` None) or of the named peer."""
    contenders = rec.get("contenders") or {}
    c = contenders.get(which) if which else next(
        (v for v in contenders.values() if isinstance(v, dict) and v.get("kind") == "ours"),
        None)
    if not isinstance(c, dict):
        return "-"
    return f"{_fmt_time(c.get('min_s'))} / {_fmt_time(c.get('median_s'))}"


def _pct(v):
    return f"{100 * v:.0f}%" if isinstance(v, (int, float)) else "-"


def _suite_rst(suite):
    records = suite.get("records") or []
    lines = _heading(str(suite.get("name", suite.get("suite", "suite"))), "^")
    if not records:
        return lines + ["No records.", ""]
    def present(keys):
        return [k for k in keys if any(r.get(k) is not None for r in records)]

    before = present(("sparsity", "threads"))
    titles = {"sparsity": "sparsity", "threads": "threads", "peer": "best peer",
              "peer_time_s": "peer time"}

    def cells(r, keys):
        out = []
        for k in keys:
            v = r.get(k)
            if v is None:
                out.append("-")
            elif k == "sparsity" and isinstance(v, float):
                out.append(f"{100 * v:.0f}%")
            elif k == "peer_time_s":
                out.append(_fmt_time(v))
            else:
                out.append(v)
        return out

    if all(isinstance(r.get("contenders"), dict) for r in records):
        pct = present(("ceiling_fraction",))
        header = ["case"] + [titles[k] for k in before] + [
            "blocksparse min / median", "best peer", "peer min / median", "speedup"] + \
            (["% of ceiling"] if pct else [])
        rows = [[r.get("case", "?")] + cells(r, before) +
                [_min_med(r, None), r.get("best_peer") or "-",
                 _min_med(r, r.get("best_peer")) if r.get("best_peer") else "-",
                 _fmt_speedup(r.get("speedup"))] +
                ([_pct(r.get("ceiling_fraction"))] if pct else []) for r in records]
    else:
        after = present(("peer", "peer_time_s"))
        header = ["case"] + [titles[k] for k in before] + ["time"] + \
            [titles[k] for k in after] + ["speedup"]
        rows = [[r.get("case", "?")] + cells(r, before) + [_fmt_time(r.get("time_s"))] +
                cells(r, after) + [_fmt_speedup(r.get("speedup"))] for r in records]
    lines += _list_table(header, rows)
    quiet = (suite.get("quiet") or {}).get("note")
    if quiet:
        lines += [_cell(quiet), ""]
    cross = crossover(records)
    if cross:
        lines += ["Where blocksparse starts beating the best peer (speedup >= 1):", ""]
        for shape, s in cross.items():
            lines.append(f"* {shape}: " + (f"from {100 * s:.0f}% sparsity" if s is not None
                                           else "not at the sparsities measured"))
        lines.append("")
    return lines


def _draw(suites, png):
    """Draw the figure of `suites` into `png` with blocksparse.bench.plot; True if drawn."""
    try:
        from blocksparse.bench.plot import plot_suites
    except ImportError:
        return False
    return plot_suites(suites, png).startswith("wrote")


def _quality_rst(result):
    """A pruning-quality result (benchmarks/bench_sparsity.py): one row per method and
    sparsity, fidelity to the dense model and the time pruning took."""
    lines = _heading(f"Pruning quality: {result.get('model', 'model')}", "^")
    lines += [f"Fidelity to the dense float32 model on {result.get('eval_texts', '?')} held-out "
              f"texts, pruned with {result.get('calibration_texts', '?')} calibration texts "
              f"(:doc:`sparsify`).", ""]
    rows = []
    for r in result.get("records") or []:
        bs = r.get("blocksize")
        rows.append([r.get("method", "?"), f"{100 * r.get('sparsity', 0):.0f}%",
                     "x".join(map(str, bs)) if isinstance(bs, list) else "-",
                     *(f"{r[k]:.4f}" if isinstance(r.get(k), (int, float)) else "-"
                       for k in ("mean_cosine", "min_cosine", "recall_at_10")),
                     f"{r['prune_s']:.0f} s" if isinstance(r.get("prune_s"), (int, float))
                     else "-"])
    header = ["method", "sparsity", "blocks", "mean cosine", "min cosine", "recall@10",
              "pruning time"]
    return lines + (_list_table(header, rows) if rows else ["No records.", ""])


def _machine_rst(machine):
    rows = [[label, machine[key]] for key, label in MACHINE_KEYS
            if machine.get(key) not in (None, "", [])]
    return _list_table(["machine", "value"], rows) if rows else []


def _load(path):
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "suites" in data:
        return data.get("machine", {}), data["suites"], data.get("started")
    if isinstance(data, dict) and "records" in data:  # one module's run() result
        return data.get("machine", {}), [data], None
    raise ValueError(f"{path.name}: neither a bench file (with 'suites') nor a suite result "
                     f"(with 'records')")


def render(results_dir=RESULTS, output=OUTPUT, fallback_png=BENCH_PNG, image_prefix="_generated/"):
    """Write the results include file; return the number of JSON files rendered.

    Parameters
    ----------
    results_dir : path
        Directory of ``*.json`` benchmark files.
    output : path
        The ``.rst`` file to write; images are copied next to it.
    fallback_png : path
        Plot embedded when no results file has its own ``.png``.
    image_prefix : str
        Path from the *including* page to `output`'s directory: Sphinx
        resolves image paths of an included file from the page that
        includes it.
    """
    results_dir, output = Path(results_dir), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    lines = [".. This file is generated by docs/render_results.py; do not edit.", ""]
    images = 0
    for path in files:
        try:
            machine, suites, started = _load(path)
        except (ValueError, OSError) as exc:
            lines += [f".. note:: {path.name} could not be read: {_cell(exc)}", ""]
            continue
        title = f"{path.stem}" + (f" ({started})" if started else "")
        lines += _heading(title, "~")
        lines += _machine_rst(machine)
        for suite in suites:
            lines += _quality_rst(suite) if suite.get("name") == "sparsity" else \
                _suite_rst(suite)
        png = path.with_suffix(".png")
        drawn = False
        if png.is_file():
            shutil.copyfile(png, output.parent / png.name)
            drawn = True
        elif suites and not any(x.get("name") == "sparsity" for x in suites):
            drawn = _draw(suites, output.parent / png.name)
        if drawn:
            what = "quality" if any(x.get("name") == "sparsity" for x in suites) else "speedup"
            lines += [f".. image:: {image_prefix}{png.name}",
                      f"   :alt: {what} against sparsity, {path.stem}", "   :width: 100%", ""]
            images += what == "speedup"
    if not files:
        lines += [".. note::", "",
                  "   No results are recorded in ``docs/results/`` yet.  Run",
                  "   ``python -m blocksparse bench`` and copy ``bench-results/bench.json``",
                  "   (and ``speedup.png``, renamed to the same stem) into ``docs/results/``.",
                  ""]
    if not images and Path(fallback_png).is_file():
        shutil.copyfile(fallback_png, output.parent / "bench-speedup.png")
        lines += ["The latest local run (``bench-results/speedup.png``):", "",
                  f".. image:: {image_prefix}bench-speedup.png",
                  "   :alt: speedup against sparsity", "   :width: 100%", ""]
    text = "\n".join(lines) + "\n"
    # Rewrite only on change, so Sphinx does not rebuild the page needlessly.
    if not output.is_file() or output.read_text() != text:
        output.write_text(text)
    return len(files)


if __name__ == "__main__":
    args = sys.argv[1:]
    n = render(*(Path(a) for a in args[:2]))
    print(f"rendered {n} result file(s) into {args[1] if len(args) > 1 else OUTPUT}")
