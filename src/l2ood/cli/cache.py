"""``l2ood cache info|clear``: what the cache folder holds, and deleting parts of it (:mod:`l2ood.data.cache`)."""

from __future__ import annotations

import argparse

from ..data.cache import CAP_ENV, GIB, KINDS, clear, decoded_cap_bytes, entries
from ..data.lookup import cache_dir


def add_cache_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``cache`` command's parser."""
    p = sub.add_parser("cache", help="show or clear l2ood's cache folder (downloads, decoded images, logs)",
                       description="The cache folder ($L2OOD_CACHE, else the OS cache folder for l2ood) holds "
                                   "checksummed downloads (one folder per data set), extracted archives, image "
                                   "folders decoded to arrays (decoded/, capped at $" + CAP_ENV + " GiB, default "
                                   "20, least recently used first out; 0 turns it off) and internal-error logs.")
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    csub.add_parser("info", help="list each part with its size", description="List each part of the cache folder "
                                                                              "with its file count and size.")
    cl = csub.add_parser("clear", help="delete parts of the cache (default: the decoded images)",
                         description="Delete parts of the cache folder. Everything in it is rebuilt on demand: "
                                     "decoded images are decoded again, downloads downloaded again (when the "
                                     "machine is online).")
    cl.add_argument("parts", nargs="*", default=["decoded"], metavar="PART",
                    help=f"what to delete: {', '.join(KINDS)} or all (default: decoded)")
    return p


def _human(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def cmd_cache(args: argparse.Namespace) -> int:
    """Run ``l2ood cache info`` or ``l2ood cache clear PART...``."""
    root = cache_dir()
    if args.cache_command == "info":
        cap = decoded_cap_bytes()
        found = entries(root)
        print(f"cache folder: {root}" + ("" if root.is_dir() else " (does not exist yet)"))
        print(f"decoded-image cap: {_human(cap) if cap else 'off'} (${CAP_ENV})")
        for e in found:
            print(f"{e.kind:<10} {_human(e.bytes):>10} {e.files:>7} files  {e.path}")
        total = sum(e.bytes for e in found)
        print(f"{'total':<10} {_human(total):>10} {sum(e.files for e in found):>7} files")
        return 0
    parts = list(KINDS) if "all" in args.parts else args.parts
    gone = clear(parts, root)
    freed = sum(e.bytes for e in gone)
    for e in gone:
        print(f"deleted {e.path} ({_human(e.bytes)})")
    print(f"freed {_human(freed)} in {root}" if gone else f"nothing to delete ({', '.join(parts)}) in {root}")
    return 0
