"""Draw the figures of the docs into docs/_static/ (run by hand; PNGs are committed).

    python docs/make_figures.py

* ``blocksize.png``: the same weight pruned with blocksize (4, 1) and (1, 4).
* ``strip_kernel.png``: how the (4, 1) INT8 kernel turns four blocks of one
  4-row strip into four VNNI groups.

Only matplotlib and NumPy are needed; the weights are random, pruned with
:func:`blocksparse.prune` when the package imports, else with the same rule
in NumPy (smallest L2 norm blocks removed).
"""
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

OUT = Path(__file__).resolve().parent / "_static"
M, K = 8, 16          # small enough to see every element
SPARSITY = 0.75


def keep_mask(W, blocksize, sparsity):
    """Boolean (M, K) mask of the elements in kept blocks."""
    R, C = blocksize
    try:
        import blocksparse
        P = blocksparse.prune(W, sparsity, blocksize=blocksize)
        mask = np.zeros(W.shape, dtype=bool)
        for i in range(W.shape[0] // R):
            for j in P.indices[P.indptr[i]:P.indptr[i + 1]]:
                mask[i * R:(i + 1) * R, j * C:(j + 1) * C] = True
        return mask
    except ImportError:
        blocks = W.reshape(M // R, R, K // C, C).transpose(0, 2, 1, 3)
        norms = np.sqrt((blocks ** 2).sum(axis=(2, 3))).ravel()
        drop = np.argsort(norms, kind="stable")[:int(round(sparsity * norms.size))]
        keep = np.ones(norms.size, dtype=bool)
        keep[drop] = False
        keep = keep.reshape(M // R, K // C)
        return np.repeat(np.repeat(keep, R, axis=0), C, axis=1)


def draw_weight(ax, W, blocksize, title):
    R, C = blocksize
    mask = keep_mask(W, blocksize, SPARSITY)
    shown = np.where(mask, np.abs(W), np.nan)
    ax.imshow(shown, cmap="Blues", vmin=0, vmax=np.abs(W).max() * 1.1,
              extent=(0, K, M, 0), interpolation="nearest")
    for m in range(M + 1):
        ax.axhline(m, color="0.85", linewidth=0.5)
    for k in range(K + 1):
        ax.axvline(k, color="0.85", linewidth=0.5)
    for i in range(M // R):
        for j in range(K // C):
            if mask[i * R, j * C]:
                ax.add_patch(Rectangle((j * C, i * R), C, R, fill=False, edgecolor="#08306b",
                                       linewidth=1.8))
    ax.set_xlim(0, K)
    ax.set_ylim(M, 0)
    ax.set_xticks(range(0, K + 1, 4))
    ax.set_yticks(range(0, M + 1, 4))
    ax.set_xlabel("in_features: column k (reduction axis K)")
    ax.set_ylabel("out_features: row m (M)")
    ax.set_title(title, fontsize=10)


def blocksize_figure():
    rng = np.random.default_rng(7)
    W = rng.standard_normal((M, K)).astype(np.float32)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    draw_weight(a, W, (4, 1), "blocksize=(4, 1): 4 consecutive output rows\n"
                              "in one input column (the paper's \"4x1\", default)")
    draw_weight(b, W, (1, 4), "blocksize=(1, 4): 4 consecutive weights\n"
                              "of one row along K")
    fig.suptitle(f"The same weight W of shape (out_features, in_features) = ({M}, {K}), "
                 f"{SPARSITY:.0%} of the blocks removed", fontsize=11)
    fig.savefig(OUT / "blocksize.png", dpi=100)


def strip_figure():
    """Four (4, 1) blocks of one strip -> four 32-bit VNNI groups, one per row."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(0, 20)
    ax.set_ylim(5.6, -0.9)
    ax.axis("off")
    cols = [1, 4, 6, 11]
    colors = ["#c6dbef", "#9ecae1", "#6baed6", "#4292c6"]
    # the strip: 4 rows x 12 columns with four stored (4, 1) blocks
    for k in range(12):
        for r in range(4):
            ax.add_patch(Rectangle((k * 0.6, r), 0.6, 1, facecolor="white", edgecolor="0.8"))
    for c, color in zip(cols, colors):
        for r in range(4):
            ax.add_patch(Rectangle((c * 0.6, r), 0.6, 1, facecolor=color, edgecolor="0.3"))
            ax.text(c * 0.6 + 0.3, r + 0.5, f"w{r}{cols.index(c)}", ha="center", va="center",
                    fontsize=6)
    ax.text(3.6, -0.45, "one 4-row strip of W: four stored (4, 1) blocks\n"
                        f"in columns {', '.join(map(str, cols))}", ha="center", fontsize=8)
    # the packed groups gw[4g + r]
    for r in range(4):
        for s, color in enumerate(colors):
            ax.add_patch(Rectangle((9 + s * 0.8, r), 0.8, 1, facecolor=color, edgecolor="0.3"))
            ax.text(9 + s * 0.8 + 0.4, r + 0.5, f"w{r}{s}", ha="center", va="center",
                    fontsize=7)
        ax.text(12.4, r + 0.5, f"gw[4g+{r}]: one int32, broadcast", va="center", fontsize=7)
    ax.text(10.6, -0.45, "packed once at quantize time:\neach row's 4 weights = 1 VNNI group",
            ha="center", fontsize=8)
    ax.add_patch(FancyArrowPatch((7.4, 2), (8.8, 2), arrowstyle="-|>", mutation_scale=14))
    # activations: 4 rows of X interleaved into 32-bit groups
    ax.text(17.3, -0.45, "activation rows x[k] of those 4 columns\n"
                         "interleaved byte-wise: lane n holds\n"
                         "x[c0][n] x[c1][n] x[c2][n] x[c3][n]", ha="center", fontsize=8)
    for n in range(4):
        for s, color in enumerate(colors):
            ax.add_patch(Rectangle((15.6 + s * 0.8, n + 0.9), 0.8, 0.8, facecolor=color,
                                   edgecolor="0.3", alpha=0.6))
            ax.text(15.6 + s * 0.8 + 0.4, n + 1.3, f"x{s},{n}", ha="center", va="center",
                    fontsize=6)
    ax.text(10.3, 5.1, "vpdpbusd: acc[r][n] += w_r0*x0,n + w_r1*x1,n + w_r2*x2,n + w_r3*x3,n"
                       "   (u8 x s8, 4 products per int32 lane, exact)", ha="center", fontsize=8)
    fig.savefig(OUT / "strip_kernel.png", dpi=100)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    blocksize_figure()
    strip_figure()
    print(f"wrote {OUT / 'blocksize.png'} and {OUT / 'strip_kernel.png'}")
