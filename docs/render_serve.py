"""Turn serving benchmark JSON into reStructuredText for the deployment page.

    python docs/render_serve.py [RESULTS_DIR] [OUTPUT.rst]

Reads every ``*.json`` in ``docs/results/serve/`` (what
``benchmarks/bench_serve.py`` writes) and writes
``docs/_generated/serve_results.rst``: per file, the machine, and per model
the highest throughput within each p90 latency budget for blocksparse and
its peers, the p50 latency at concurrency 1 and, where recorded, the
fidelity (cosine of the server's embeddings to float32's, min / mean).  The plot with the same
stem (``.png``) is copied next to it and embedded.  With no results it
writes a note saying how to record them, so the docs always build.
``docs/conf.py`` calls :func:`render` on every build.
"""
import json
import shutil
import sys
from pathlib import Path

from render_results import _list_table

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "serve"
OUTPUT = HERE / "_generated" / "serve_results.rst"

NOTE = """No serving results are recorded in this checkout yet.  On a quiet machine, run
``python benchmarks/bench_serve.py --json docs/results/serve/MACHINE-DATE.json`` (it
writes the plot next to the JSON) and rebuild the docs.
"""


def _best(cell):
    if cell is None:
        return "none"
    return f"{cell['rps']:.0f} req/s (c={cell['concurrency']}, p90 {cell['p90_ms']:.1f} ms)"


def _model_rows(result):
    rows = []
    budgets = result.get("budgets_ms", [])
    fidelity = result.get("fidelity")
    for label, entry in result["targets"].items():
        summary = result.get("summary", {}).get(label, {})
        first = entry["levels"][0] if entry["levels"] else {}
        p50 = first.get("p50_ms")
        row = [label] + [_best(summary.get(f"p90<={b:g}ms")) for b in budgets] \
            + ["-" if p50 is None else f"{p50:.1f} ms"]
        if fidelity is not None:
            f = fidelity.get(label)
            row.append("-" if f is None else f"{f['min']:.4f} / {f['mean']:.4f}")
        rows.append(row)
    header = ["server"] + [f"p90 <= {b:g} ms" for b in budgets] + ["p50 at c=1"]
    if fidelity is not None:
        header.append("cosine to float32, min / mean")
    return header, rows


def render(results_dir=RESULTS, output=OUTPUT, image_prefix="_generated/"):
    """Write the results page fragment; returns the number of files rendered.

    Images are copied next to `output` and referenced with `image_prefix`
    (Sphinx resolves an included file's paths from the including page).
    """
    results_dir, output = Path(results_dir), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    parts, count = [], 0
    for path in files:
        try:
            payload = json.loads(path.read_text())
            models = payload["models"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parts.append(f"``{path.name}`` could not be read ({type(exc).__name__}).\n")
            continue
        count += 1
        title = path.stem
        parts.append(f"{title}\n{'~' * len(title)}\n")
        m = payload.get("machine", {})
        s = payload.get("settings", {})
        cores = m.get("cores", m.get("logical_cpus", "?"))
        parts.append(f"{m.get('cpu', 'unknown CPU')}, {cores} cores"
                     f"; {s.get('threads', '?')} threads per server, "
                     f"{s.get('duration', '?')} s per level, words per text "
                     f"{s.get('words', '?')}.\n")
        for model, result in models.items():
            header, rows = _model_rows(result)
            parts.append("\n".join(_list_table(header, rows, title=model)))
        png = path.with_suffix(".png")
        if png.is_file():
            shutil.copy2(png, output.parent / png.name)
            parts.append(f".. image:: {image_prefix}{png.name}\n   :width: 100%\n")
    text = "\n".join(parts) if parts else NOTE
    if not output.is_file() or output.read_text() != text:
        output.write_text(text)
    return count


if __name__ == "__main__":
    args = sys.argv[1:]
    n = render(*(Path(a) for a in args[:2]))
    print(f"rendered {n} result file(s)")
