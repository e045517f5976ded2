"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Every file the package writes (``save_npz``, checkpoints, the command line's
``--output``, ``--json`` and plots) goes through :func:`replacing`: the data
goes to a new temporary file in the same directory (created with
``O_EXCL``, so it is never an existing file or a symlink), is flushed to
disk, and is then renamed over the destination with :func:`os.replace`.
A rename replaces the directory entry: when the destination is a symlink,
the link is replaced and its target (possibly outside the directory, as in
the Hugging Face cache) is left alone.  After a crash the destination holds
the old or the new content; at worst a ``.<name>.<random>.tmp`` file is left
behind.
"""
import contextlib
import os
import tempfile

__all__ = ["replacing", "fsync_directory", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"


def _umask():
    """The process umask, read without changing it (Linux), else via os.umask."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_directory(directory):
    """Flush a directory's entries (a rename) to disk, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path, sync=True):
    """Context manager: write to the yielded temporary path, then replace `path` with it.

    Parameters
    ----------
    path : str or os.PathLike
        The destination.  An existing directory there raises
        :class:`IsADirectoryError` before anything is written.
    sync : bool, optional
        fsync the file before the rename and the directory after it (so the
        rename survives a power cut, not only a killed process).

    Yields
    ------
    str
        The temporary file's path (an empty file, mode 0600 until renamed).
        Write it by name or open it; the body may raise to abandon the write,
        and the temporary file is removed.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a directory, not a file path")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would differ from open()'s mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_directory(directory)
