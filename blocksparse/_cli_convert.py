"""``blocksparse convert``: a ``pytorch_model.bin`` checkpoint to a safetensors directory.

The work is :func:`blocksparse.convert_checkpoint` (``_convert.py``); this
module turns its arguments and errors into the command line's exit codes.
"""
import time
from pathlib import Path

from ._cli import UsageError

__all__ = ["run_convert"]


def run_convert(args):
    """Convert a checkpoint (``blocksparse convert``)."""
    from ._convert import CheckpointError, convert_checkpoint
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise UsageError(f"SRC {args.src!r} does not exist")
    if dst.exists() and not dst.is_dir():
        raise UsageError(f"DST {args.dst!r} exists and is not a directory")
    if dst.exists() and any(dst.iterdir()) and not args.force:
        raise UsageError(f"DST {args.dst!r} is not empty (use --force to write into it)")
    src_dir = src if src.is_dir() else src.parent
    if dst.exists() and dst.resolve() == src_dir.resolve():
        raise UsageError("DST must differ from SRC's directory")
    try:
        import safetensors  # noqa: F401
    except ImportError:
        raise UsageError("convert needs the 'safetensors' package "
                         "(pip install 'blocksparse[models]')") from None
    t0 = time.perf_counter()
    try:
        info = convert_checkpoint(src, dst, force=args.force)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except CheckpointError as exc:
        raise RuntimeError(f"cannot convert {args.src!r}: {exc}") from None
    dtypes = ", ".join(f"{n} {k}" for k, n in sorted(info["dtypes"].items()))
    print(f"wrote {dst / 'model.safetensors'} in {time.perf_counter() - t0:.1f} s: "
          f"{info['tensors']} tensors ({dtypes}), {info['bytes'] / 1e6:.1f} MB")
    for dropped, kept in sorted(info["tied"].items()):
        print(f"tied: {dropped} = {kept} (stored once)")
    if info["copied"]:
        print(f"copied: {', '.join(info['copied'])}")
    if "config.json" not in info["copied"]:
        print("note: SRC has no config.json; loaders need one beside the weights")
    return 0
