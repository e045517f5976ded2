"""The speedup figure of ``blocksparse bench``: one row per suite, one panel per thread count.

* SpMM suites: speedup against sparsity, one line per (blocksize, N) for INT8
  and (blocksize, form) for float32, the geometric mean over the weight
  shapes with a band from the slowest to the fastest shape;
* BERT: speedup against sparsity, one line per (model, batch case);
* contention (BERT with busy-process levels): each contender's slowdown
  against the number of busy processes;
* a suite without speedups (no peer installed): its fraction of the measured
  ceiling against sparsity instead;
* anything else with ``sparsity`` and ``speedup``: one line per shape.

Every series has its own colour and marker in the whole figure (a legend
entry means the same series in every panel); the y label names the peer
the speedup is measured against (the best peers seen in the panel).  Drawn
with matplotlib's Agg canvas (no pyplot, no display).
"""
import math
from pathlib import Path

from .._atomic import replacing
from .._cli_report import shape_label

# 16 clearly different colours: matplotlib's tab10 and six more.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#000000", "#b15928", "#6a3d9a", "#33a02c",
          "#fb9a99", "#fdbf6f")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H", "x")
LINESTYLES = ("-", "--", ":", "-.")


def _geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _bs(rec):
    b = rec.get("blocksize")
    return f"{b[0]}x{b[1]}" if isinstance(b, (list, tuple)) and len(b) == 2 else None


def _series_label(suite, rec):
    """Which line a record belongs to: the model and case for BERT; else the
    blocksize, the product form when the suite has several, and N (the shapes
    are merged), or the shape when the records have none of those."""
    if suite.get("suite") == "bert" or rec.get("model"):
        return f"{rec.get('model', shape_label(rec))} {rec.get('path', '')}".strip()
    forms = {r.get("form") for r in suite.get("records", [])}
    parts = [_bs(rec), rec.get("form") if len(forms) > 1 else None,
             f"N={rec['N']}" if rec.get("N") is not None else None]
    return " ".join(p for p in parts if p) or shape_label(rec) or "all"


def speedup_panels(suite, field="speedup"):
    """``{threads: {label: [(sparsity, geomean, low, high), ...]}}`` and the peers seen.

    `field` is the record value drawn: ``"speedup"``, or ``"ceiling_fraction"``
    when no peer set a bar.
    """
    panels, peers = {}, {}
    for r in suite.get("records", []):
        sp, s = r.get("sparsity"), r.get(field)
        if not isinstance(sp, (int, float)) or not isinstance(s, (int, float)) or s <= 0:
            continue
        t = r.get("threads")
        lines = panels.setdefault(t, {})
        lines.setdefault(_series_label(suite, r), {}).setdefault(float(sp), []).append(s)
        name = r.get("best_peer") or r.get("peer")
        if name:
            peers.setdefault(t, set()).add(str(name))
    out = {}
    for t, lines in panels.items():
        out[t] = {label: sorted((sp, _geomean(v), min(v), max(v)) for sp, v in pts.items())
                  for label, pts in lines.items()}
    return out, peers


def contention_panels(suite):
    """``{threads: {contender: [(busy processes, geomean slowdown), ...]}}``."""
    panels = {}
    for r in suite.get("records", []):
        cont = r.get("contention")
        if not cont:
            continue
        lines = panels.setdefault(r.get("threads"), {})
        for name in r.get("contenders", {}):
            lines.setdefault(name, {}).setdefault(0, []).append(1.0)
        for level, entry in cont.items():
            for name, e in entry.items():
                if e.get("slowdown"):
                    lines.setdefault(name, {}).setdefault(int(level), []).append(e["slowdown"])
    return {t: {n: sorted((lv, _geomean(v)) for lv, v in pts.items()) for n, pts in lines.items()}
            for t, lines in panels.items()}


class _Styles:
    """A distinct (colour, marker, line style) per series label, in order of appearance."""

    def __init__(self):
        self.seen = {}

    def __call__(self, label):
        if label not in self.seen:
            i = len(self.seen)
            self.seen[label] = (COLORS[i % len(COLORS)], MARKERS[i % len(MARKERS)],
                                LINESTYLES[(i // len(COLORS)) % len(LINESTYLES)])
        return self.seen[label]


def _peer_label(peers):
    if not peers:
        return "speedup over the best peer"
    names = sorted(peers)
    if len(names) == 1:
        return f"speedup over {names[0]}\n(its time / blocksparse's)"
    return "speedup over the best peer\n(" + ", ".join(names) + ")"


def figure_rows(suites):
    """The rows of the figure: ``[(title, kind, {threads: lines}, peers)]``.

    A suite without speedups (no peer could set the bar) is drawn as its
    fraction of the measured ceiling instead (kind ``"ceiling"``).
    """
    rows = []
    for suite in suites:
        panels, peers = speedup_panels(suite)
        kind = "speedup"
        if not panels:
            panels, peers = speedup_panels(suite, "ceiling_fraction")
            kind = "ceiling"
        if panels:
            title = str(suite.get("name", suite.get("suite", "")))
            recs = [r for r in suite.get("records", []) if not r.get("model")]
            shapes = {shape_label(r) for r in recs} - {None}
            merged = not any(shape_label(r) and shape_label(r) in _series_label(suite, r) for r in recs)
            if merged and len(shapes) > 1:
                title += f"\ngeomean of {len(shapes)} weight shapes, band: slowest to " \
                         f"fastest shape"
            rows.append((title, kind, panels, peers))
        cont = contention_panels(suite)
        if cont:
            rows.append((f"{suite.get('name', '')}: under contention", "contention", cont, {}))
    return rows


def plot_suites(suites, path):
    """Draw the figure for `suites` into `path`.

    Parameters
    ----------
    suites : list of dict
        Suite results (``name``, ``records``; ``suite`` names the kind).
    path : str or os.PathLike
        Image to write (PNG unless the suffix names another format);
        parent directories are created.

    Returns
    -------
    str
        What happened, for the user: the file written, or why not.
    """
    try:
        import matplotlib  # noqa: F401  (the package itself first: submodules may be cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    rows = figure_rows(suites)
    if not rows:
        return "no record has a sparsity with a speedup or a ceiling fraction: no plot"
    threads = sorted({t for _, _, panels, _ in rows for t in panels},
                     key=lambda t: (t is None, t))
    ncols = len(threads)
    fig = Figure(figsize=(5.6 * ncols, 4.0 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    style = _Styles()
    for i, (title, kind, panels, peers) in enumerate(rows):
        for j, t in enumerate(threads):
            ax = fig.add_subplot(len(rows), ncols, i * ncols + j + 1)
            lines = panels.get(t)
            tname = f"{t} thread{'s' if t != 1 else ''}" if t is not None else "all"
            ax.set_title(f"{title}\n{tname}", fontsize=9)
            if not lines:
                ax.set_axis_off()
                continue
            ys = []
            for label, pts in lines.items():
                color, marker, ls = style(label)
                xs = [p[0] * (1 if kind == "contention" else 100) for p in pts]
                y = [p[1] * (100 if kind == "ceiling" else 1) for p in pts]
                ys += y
                ax.plot(xs, y, color=color, marker=marker, linestyle=ls, label=label)
                if kind != "contention" and any(p[2] != p[3] for p in pts):
                    f = 100 if kind == "ceiling" else 1
                    lo, hi = [p[2] * f for p in pts], [p[3] * f for p in pts]
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.12, linewidth=0)
                    ys += lo + hi
            if kind != "ceiling":
                ax.axhline(1.0, color="0.5", linestyle="--", linewidth=1)
            if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            if kind == "speedup":
                ax.set_xlabel("sparsity (% of blocks removed)")
                ax.set_ylabel(_peer_label(peers.get(t)), fontsize=8)
            elif kind == "ceiling":
                ax.set_xlabel("sparsity (% of blocks removed)")
                ax.set_ylabel("% of the measured ceiling\n(no peer installed to compare with)",
                              fontsize=8)
            else:
                ax.set_xlabel("busy-looping processes beside the run")
                ax.set_ylabel("slowdown (median / median with none)", fontsize=8)
                ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6, ncol=2 if len(lines) > 6 else 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # atomic, as every output (docs/guarantees.rst)
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    return f"wrote {path}"
