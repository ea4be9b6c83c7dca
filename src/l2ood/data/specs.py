"""Data set specs as strings: the parametric ``npz:PATH``, ``imagefolder:PATH``, ``imglist:LISTFILE[@IMAGEROOT]``
and ``wds:SHARDS`` made independent of the working directory (:func:`canonical_spec`), so a recorded spec loads
the same files from anywhere. Used by the registry (:mod:`l2ood.data.registry`) and the streamed index
(:mod:`l2ood.data.stream`) alike."""

from __future__ import annotations

from pathlib import Path

from .imglist import parse_imglist_spec


def canonical_spec(name: str) -> str:
    """``name`` with the paths of ``npz:``, ``imagefolder:`` and ``imglist:`` specs made absolute, so a
    recorded spec loads the same files from any working directory."""
    def absolute(p: str) -> str:
        return str(Path(p).expanduser().absolute()) if p else p

    if name.startswith("npz:"):
        return "npz:" + absolute(name[4:])
    if name.startswith("imagefolder:"):
        return "imagefolder:" + absolute(name[len("imagefolder:"):])
    if name.startswith("wds:"):
        return "wds:" + absolute(name[len("wds:"):])
    if name.startswith("imglist:"):
        list_file, image_root = parse_imglist_spec(name[len("imglist:"):])
        return "imglist:" + absolute(str(list_file)) + (f"@{absolute(str(image_root))}" if image_root else "")
    return name


__all__ = ["canonical_spec"]
