"""Batch augmentation: per-sample randomness, exact crops and flips, reproducibility."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from l2ood.data import augment_batch


def test_each_sample_gets_its_own_crop() -> None:
    img = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    batch = img.expand(32, 1, 8, 8).contiguous()
    out = augment_batch(batch, pad=2, hflip=False, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 5  # identical inputs, different per-sample offsets


def test_crop_is_a_window_of_the_padded_image() -> None:
    img = torch.arange(1, 37, dtype=torch.float32).view(1, 1, 6, 6)
    out = augment_batch(img.expand(16, 1, 6, 6), pad=1, hflip=False,
                        generator=torch.Generator().manual_seed(1))
    padded = F.pad(img, (1, 1, 1, 1))[0, 0]
    windows = {tuple(padded[dy : dy + 6, dx : dx + 6].flatten().tolist())
               for dy in range(3) for dx in range(3)}
    for o in out:
        assert tuple(o[0].flatten().tolist()) in windows


def test_flip_only() -> None:
    img = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    out = augment_batch(img.expand(64, 1, 4, 4), pad=0, hflip=True,
                        generator=torch.Generator().manual_seed(2))
    flipped = (out == img.flip(3)).flatten(1).all(1)
    same = (out == img).flatten(1).all(1)
    assert bool((flipped | same).all())
    assert 10 < int(flipped.sum()) < 54  # about half flipped


def test_same_seed_same_result_and_uint8_ok() -> None:
    x = torch.randint(0, 255, (8, 3, 10, 10), dtype=torch.uint8)
    a = augment_batch(x, 2, True, torch.Generator().manual_seed(5))
    b = augment_batch(x, 2, True, torch.Generator().manual_seed(5))
    c = augment_batch(x, 2, True, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)


def test_sharded_batch_is_augmented_like_the_whole_batch() -> None:
    x = torch.randint(0, 255, (10, 1, 6, 6), dtype=torch.uint8)
    whole = augment_batch(x, 2, True, torch.Generator().manual_seed(9))
    parts = [augment_batch(x[s : s + n], 2, True, torch.Generator().manual_seed(9), rows=(s, 10))
             for s, n in ((0, 5), (5, 3), (8, 2))]
    assert torch.equal(torch.cat(parts), whole)
