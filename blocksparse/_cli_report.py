"""Progress bars, tables and the speedup plot of ``blocksparse bench``.

Each uses its optional package when it is importable (tqdm, rich,
matplotlib) and falls back to plain text, or skips the plot, when not.
"""
import contextlib
import sys
import time
from pathlib import Path

from ._atomic import replacing

__all__ = ["Progress", "print_suite_table", "plot_speedup", "format_time", "format_speedup",
           "shape_label"]


def format_time(seconds):
    """A duration in the unit that keeps 3-4 significant digits."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def format_speedup(value):
    return "-" if value is None else f"{value:.2f}x"


class Progress:
    """Per-suite progress: a tqdm bar when importable, else plain lines.

    Parameters
    ----------
    plain : bool
        Plain lines even if tqdm is installed.
    stream : file-like, optional
        Where to write; standard error by default, so that tables on
        standard output stay clean when redirected.
    """

    def __init__(self, plain=False, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self._tqdm = None
        # A bar redrawn with carriage returns only makes sense on a terminal;
        # logs and pipes get plain lines.
        if not plain and getattr(self.stream, "isatty", lambda: False)():
            try:
                import tqdm as _tqdm_pkg  # noqa: F401
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            self._tqdm = tqdm

    @contextlib.contextmanager
    def suite(self, name, index, count, path):
        """Context manager yielding the progress callback of one suite.

        The callback takes either ``(done, total, desc="")`` (a bar with a
        known length) or a single message string (one step of unknown
        count), so modules written either way drive the same display.
        """
        label = f"[{index}/{count}] {name}"
        print(f"{label}: running {Path(path).name}", file=self.stream, flush=True)
        state = {"bar": None, "last": 0.0, "steps": 0}

        def report(done=None, total=None, desc=""):
            if isinstance(done, str) and total is None:  # message form: one more step
                desc, done = done, state["steps"] + 1
            state["steps"] = done = int(done or 0)
            total = None if total is None else max(int(total), 0)
            if self._tqdm is not None:
                bar = state["bar"]
                if bar is None:
                    bar = state["bar"] = self._tqdm(total=total, desc=label, unit="case",
                                                    file=self.stream, leave=True,
                                                    dynamic_ncols=True)
                if bar.total != total:
                    bar.total = total
                bar.n = done
                bar.set_postfix_str(str(desc)[:40], refresh=False)
                bar.refresh()
                return
            now = time.monotonic()
            last = total is not None and done >= total
            # plain lines: at most one every 2 s, plus the last one
            if last or now - state["last"] >= 2.0:
                state["last"] = now
                count_text = f"{done}/{total}" if total is not None else f"{done}"
                tail = f"  {desc}" if desc else ""
                print(f"  {label} {count_text}{tail}", file=self.stream, flush=True)

        try:
            yield report
        finally:
            if state["bar"] is not None:
                state["bar"].close()


def shape_label(rec):
    """The weight shape a record belongs to, e.g. ``"3072x768"``, or None."""
    if rec.get("shape") is not None:
        shape = rec["shape"]
        if isinstance(shape, (list, tuple)):
            return "x".join(str(s) for s in shape)
        return str(shape)
    if rec.get("M") is not None and rec.get("K") is not None:
        return f"{rec['M']}x{rec['K']}"
    return None


def peer_name(rec):
    """Name of the best peer of a record (``peer`` or ``best_peer``), or None."""
    return rec.get("peer", rec.get("best_peer"))


def peer_time(rec):
    """The best peer's time: ``peer_time_s``, or its entry in ``peer_times_s``."""
    if rec.get("peer_time_s") is not None:
        return rec["peer_time_s"]
    times = rec.get("peer_times_s")
    name = peer_name(rec)
    if isinstance(times, dict) and name in times:
        return times[name]
    return None


# Optional record fields shown as table columns when present: before and after the time.
def _pct(v):
    return f"{100 * v:.0f}%" if isinstance(v, float) else str(v)


_BEFORE = (("sparsity", "sparsity", lambda r: r.get("sparsity"), _pct),
           ("threads", "threads", lambda r: r.get("threads"), str))
_AFTER = (("peer", "best peer", peer_name, str),
          ("peer_time", "peer time", peer_time, format_time))


def _table_rows(records):
    def present(cols):
        return [c for c in cols if any(c[2](rec) is not None for rec in records)]

    before, after = present(_BEFORE), present(_AFTER)
    header = ["case"] + [c[1] for c in before] + ["time"] + [c[1] for c in after] + ["speedup"]

    def cells(rec, cols):
        out = []
        for _, _, get, fmt in cols:
            v = get(rec)
            out.append("-" if v is None else fmt(v))
        return out

    rows = [[str(rec["case"])] + cells(rec, before) + [format_time(rec["time_s"])] +
            cells(rec, after) + [format_speedup(rec["speedup"])] for rec in records]
    return header, rows


def _plain_table(title, header, rows, file):
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    print(title, file=file)
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                     for i, (h, w) in enumerate(zip(header, widths)))
    print(line, file=file)
    print("-" * len(line), file=file)
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))), file=file)


def print_suite_table(entry, plain=False, file=None):
    """Print one suite's records: case, time, best peer, speedup.

    Records with ``contenders`` (``{name: {"min_s", "median_s", ...}}``)
    get one column per contender with its min and median; the caption
    carries the suite's ``quiet`` note when there is one.

    Parameters
    ----------
    entry : dict
        A suite result (``name``, ``records``).
    plain : bool
        Plain text even if rich is installed.
    file : file-like, optional
        Standard output by default.
    """
    file = file if file is not None else sys.stdout
    records = entry["records"]
    if records and all(isinstance(r.get("contenders"), dict) and r["contenders"]
                       for r in records):
        from .bench._common import contender_cells
        header, rows = contender_cells(records)
        caption = ("min / median per contender (% of the ceiling measured in this run); "
                   "speedup = best peer's time / blocksparse's, the median of per-round ratios")
    else:
        header, rows = _table_rows(records)
        caption = "speedup = best peer's time / blocksparse's time"
    quiet = (entry.get("quiet") or {}).get("note")
    if quiet:
        caption += "\n" + quiet
    title = f"{entry['name']}  ({caption.splitlines()[0]})"
    if not rows:
        print(f"{entry['name']}: no records", file=file)
        return
    if not plain:
        try:
            import rich  # noqa: F401  (the package itself first: submodules may be cached)
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            Console = None
        if Console is not None:
            table = Table(title=entry["name"], title_justify="left", caption=caption,
                          caption_justify="left")
            for i, h in enumerate(header):
                table.add_column(h, justify="left" if i == 0 else "right",
                                 no_wrap=i > 0)
            for r in rows:
                table.add_row(*r)
            width = None if file.isatty() else 120
            Console(file=file, width=width).print(table)
            return
    _plain_table(title, header, rows, file)
    if quiet:
        print(quiet, file=file)
    print(file=file)


def plot_speedup(suites, path):
    """Draw the speedup figure of `suites` into `path` (see :mod:`blocksparse.bench.plot`).

    Returns
    -------
    str
        What happened, for the user: the file written, or why not.
    """
    from .bench.plot import plot_suites
    return plot_suites(suites, path)
