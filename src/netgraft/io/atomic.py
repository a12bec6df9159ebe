"""Writing an output directory atomically: OUT may never be, contain or lie inside the source; it is written into a
temporary sibling that becomes OUT by one atomic rename (renameat2 RENAME_NOREPLACE / RENAME_EXCHANGE on Linux), and
a failed run leaves nothing behind."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import CheckpointError


# ------------------------------------------------------------------------------------------------ OUT vs DIR
def check_paths(src: Path, out: Path, force: bool) -> None:
    """OUT must not be DIR, lie inside DIR or contain DIR (as paths, through symlinks, or as the same directories
    under other names); without --force it must not exist (a dangling symlink counts)."""
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such directory")
    real_src = src.resolve(strict=True)
    name = out.name
    lexical = out.resolve() if name in ("", ".", "..") else out.parent.resolve() / name  # what the rename replaces
    for o in dict.fromkeys((lexical, out.resolve())):
        if o == real_src:
            raise CheckpointError(f"OUT {out} is DIR {src}; choose another output directory")
        if o.is_relative_to(real_src):
            raise CheckpointError(f"OUT {out} lies inside DIR {src}; choose a directory outside it")
        if real_src.is_relative_to(o):
            raise CheckpointError(f"OUT {out} contains DIR {src}" + (" (--force would delete it)" if force else "") +
                           "; choose a directory that does not contain the source")
    src_stat = os.stat(real_src)
    for p in (lexical, *lexical.parents):  # the same directory under another name (bind mount, hard-linked path)
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (src_stat.st_dev, src_stat.st_ino):
            raise CheckpointError(f"OUT {out} is or lies inside DIR {src} (the same directory under another name)")
    try:
        out_stat = os.stat(lexical)
    except OSError:
        out_stat = None
    if out_stat is not None:
        for p in (real_src, *real_src.parents):
            st = os.stat(p)
            if (st.st_dev, st.st_ino) == (out_stat.st_dev, out_stat.st_ino):
                raise CheckpointError(f"OUT {out} contains DIR {src} (under another name); choose another directory")
    if os.path.lexists(out) and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")

# ------------------------------------------------------------------------------------------------ atomic OUT
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


placed: list[Path] = []  # OUT once the run's directory has become it (what a late failure may no longer deny)


def renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2): True when done; False where it is unavailable (no such libc call, kernel or filesystem
    support); an OSError (FileExistsError with RENAME_NOREPLACE, FileNotFoundError...) otherwise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


def remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def place(tmp: Path, out: Path, force: bool) -> None:
    """Makes the finished directory `tmp` become `out` in one atomic step. Without `force`, an `out` that exists by
    now (another run made it meanwhile) is left alone and the run fails; with `force`, `out` is atomically swapped
    with `tmp` and the old one deleted afterwards."""
    exists_msg = f"{out} exists (created while netgraft was writing it); it was left alone; pass --force to replace it"
    for _ in range(10):  # only loops while other processes keep creating and deleting OUT
        if force and os.path.lexists(out):
            try:
                swapped = renameat2(tmp, out, _RENAME_EXCHANGE)
            except FileNotFoundError:
                continue  # OUT went away meanwhile: a plain placement
            if swapped:
                placed.append(out)
                remove(tmp)  # the old OUT, now under the temporary name
                return
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.netgraft-old-", dir=out.parent))
            try:  # no renameat2: move the old OUT aside (atomic), move the new one in (atomic), delete the old one
                os.rename(out, aside / "old")
                try:
                    os.rename(tmp, out)
                except BaseException:
                    os.rename(aside / "old", out)
                    raise
                placed.append(out)
            finally:
                shutil.rmtree(aside, ignore_errors=True)
            return
        try:
            if renameat2(tmp, out, _RENAME_NOREPLACE):
                placed.append(out)
                return
        except FileExistsError:
            if force:
                continue
            raise CheckpointError(exists_msg) from None
        # no renameat2: rename(2) itself refuses a non-empty directory or a file at OUT (an empty directory made in
        # the instant between this check and the rename is the one thing it could replace)
        if os.path.lexists(out):
            if force:
                continue
            raise CheckpointError(exists_msg)
        try:
            os.rename(tmp, out)
        except OSError as err:
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR) and not force:
                raise CheckpointError(exists_msg) from err
            raise
        placed.append(out)
        return
    raise CheckpointError(f"{out} keeps changing while netgraft places it (other runs?); nothing was written")


@contextmanager
def atomic_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling directory (permissions 0777 & ~umask, like a mkdir) that becomes `out` only if the block
    completes; on any failure it is removed, with the parent directories this call created."""
    if os.path.lexists(out) and not force:
        raise CheckpointError(f"{out} exists; pass --force to replace it")
    created = []
    p = Path(os.path.abspath(out.parent))
    while not os.path.lexists(p) and p != p.parent:
        created.append(p)
        p = p.parent
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.netgraft-", dir=out.parent))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; OUT is an ordinary directory
        yield tmp
        place(tmp, out, force)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # innermost first; only if still empty
            try:
                os.rmdir(d)
            except OSError:
                break
        raise
