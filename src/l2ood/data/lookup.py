"""Shared look-up, download and archive helpers for the benchmark readers (same rules as :mod:`.mnist`).

Look-up order for a data set called ``NAME``:

1. an explicit data root (``--data-root`` / ``root=``), then the ``L2OOD_DATA`` environment variable,
   each searched as ``ROOT/NAME/``, ``ROOT/<alias>/`` and ``ROOT/``;
2. the download cache ``$L2OOD_CACHE/NAME`` (default: the OS cache folder ``l2ood``);
3. if allowed, a checksummed download (pooch, official MD5) into that cache, with a network timeout.

Archives (``.tar``, ``.tar.gz``, ``.zip``) are read in place where the format allows it, or extracted
member by member (regular files with safe relative names only) into the cache.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from .errors import DataFormatError, DataNotFoundError

Searched = list[tuple[str, Path]]


def cache_dir() -> Path:
    """Download cache: ``$L2OOD_CACHE`` or the OS cache folder for ``l2ood``."""
    env = os.environ.get("L2OOD_CACHE")
    if env:
        return Path(env)
    import pooch

    return Path(pooch.os_cache("l2ood"))


def search_dirs(name: str, root: str | Path | None = None, aliases: Iterable[str] = ()) -> Searched:
    """Folders searched, in order, as ``(description, path)`` pairs (download cache last)."""
    out: Searched = []
    roots: list[tuple[str, str]] = []
    if root is not None:
        roots.append(("data root", str(root)))
    if os.environ.get("L2OOD_DATA"):
        roots.append(("L2OOD_DATA", os.environ["L2OOD_DATA"]))
    for desc, r in roots:
        rp = Path(r).expanduser()
        out += [(desc, rp / name), *[(desc, rp / a) for a in aliases], (desc, rp)]
    out.append(("download cache", cache_dir() / name))
    return out


def download(name: str, url: str, md5: str, fname: str | None = None, timeout: float = 30.0) -> Path:
    """Checksummed download of ``url`` into ``cache_dir()/name``; DataNotFoundError on any failure."""
    import pooch

    target = cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    fname = fname or url.rsplit("/", 1)[-1]
    try:
        path = pooch.retrieve(
            url=url,
            known_hash=f"md5:{md5}",
            fname=fname,
            path=target,
            downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=True),
        )
    except Exception as e:  # network errors come in many types; we report them all
        raise DataNotFoundError(f"{url}: {type(e).__name__}: {e}") from e
    return Path(path)


def missing_message(title: str, searched: Searched, why: str, download_tried: bool,
                    supply: list[str]) -> str:
    """The DataNotFoundError text: where we looked, why the download failed, how to supply the data."""
    lines = [
        f"{title} not found.",
        "Searched:",
        *[f"  - {d}: {p}" for d, p in searched],
        (f"Download failed: {why}" if why else "Download failed.") if download_tried else "Download disabled.",
        "Ways to supply it:",
        *[f"  {i}. {s}" for i, s in enumerate(supply, 1)],
    ]
    return "\n".join(lines)


def _safe_name(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or any(part in ("", "..") for part in p.parts) or "\\" in name:
        return None
    return p


def extract(archive: Path, dest: Path, keep: Callable[[str], bool]) -> Path:
    """Extract the regular-file members of ``archive`` whose name passes ``keep`` into ``dest``.

    Members with absolute names, ``..`` parts, links or devices are skipped; the extraction goes to a
    temporary folder that is renamed to ``dest`` at the end, so an interrupted run leaves no half tree.
    """
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    rel = _safe_name(info.filename)
                    if info.is_dir() or rel is None or not keep(info.filename):
                        continue
                    out = tmp.joinpath(*rel.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as zsrc, open(out, "wb") as dst:
                        shutil.copyfileobj(zsrc, dst)
                    n += 1
        else:
            with tarfile.open(archive) as tf:
                for m in tf:
                    rel = _safe_name(m.name)
                    if not m.isfile() or rel is None or not keep(m.name):
                        continue
                    src = tf.extractfile(m)
                    if src is None:
                        continue
                    out = tmp.joinpath(*rel.parts)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    n += 1
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataFormatError(f"{archive}: cannot extract ({type(e).__name__}: {e})") from e
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataFormatError(f"{archive}: no usable members in the archive")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, dest)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not dest.is_dir():
            raise
    return dest
