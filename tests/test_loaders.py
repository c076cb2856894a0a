"""The worker-side pieces of the data path: symmetries, tile resizing, the fast collate."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from pipeline.data import loaders
from pipeline.data.loaders import (
    Collate,
    Dihedral,
    apply_symmetry,
    collate,
    resize_tile,
    symmetries,
)
from pipeline.train.seeds import seed_worker

IMAGE = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)


def test_quarter_turns_are_numpy_rotations() -> None:
    for k, symmetry in enumerate(symmetries(flips=False, quarter_turns=True)):
        assert np.array_equal(apply_symmetry(IMAGE, symmetry), np.rot90(IMAGE, k))


def test_flips_are_numpy_flips() -> None:
    expected = [IMAGE, IMAGE[:, ::-1], IMAGE[::-1], IMAGE[::-1, ::-1]]
    for symmetry, want in zip(symmetries(flips=True, quarter_turns=False), expected, strict=True):
        assert np.array_equal(apply_symmetry(IMAGE, symmetry), want)


def test_flips_and_turns_give_the_eight_symmetries_of_the_square() -> None:
    square = np.arange(16, dtype=np.uint8).reshape(4, 4)
    outputs = {apply_symmetry(square, s).tobytes() for s in symmetries(True, True)}
    numpy_group = {np.rot90(m, k).tobytes() for m in (square, square[:, ::-1]) for k in range(4)}
    assert outputs == numpy_group
    assert symmetries(False, False) == ((False, None),)


def test_symmetry_output_is_a_contiguous_copy() -> None:
    view = IMAGE[1:4, 2:6]
    for symmetry in symmetries(True, True):
        out = apply_symmetry(view, symmetry)
        assert out.flags.c_contiguous
        assert out.flags.writeable
        assert not np.shares_memory(out, IMAGE)


def test_dihedral_moves_image_and_mask_alike_and_follows_the_seed() -> None:
    # The mask is the image's first channel: any mismatch between the two shows.
    augment = A.Compose([Dihedral(flips=True, quarter_turns=True)])
    seen = set()
    for seed in range(64):
        augment.set_random_seed(seed)
        out = augment(image=IMAGE, mask=np.ascontiguousarray(IMAGE[..., 0]))
        assert np.array_equal(out["mask"], out["image"][..., 0])
        augment.set_random_seed(seed)
        again = augment(image=IMAGE, mask=np.ascontiguousarray(IMAGE[..., 0]))
        assert np.array_equal(again["image"], out["image"])
        seen.add(out["image"].tobytes())
    assert len(seen) == 8  # every symmetry is drawn


@pytest.mark.parametrize(("tile", "size"), [(512, 224), (256, 112), (300, 224), (96, 128)])
def test_resized_tile_is_close_to_torch_antialiased_bilinear(tile: int, size: int) -> None:
    # A smooth image (aliasing would show on noise, not on what the comparison is about).
    rows, cols = np.mgrid[:tile, :tile] / tile
    image = np.stack([rows, cols, (rows + cols) / 2], -1) * 255
    image = (image + 20 * np.sin(rows * 17)[..., None]).clip(0, 255).astype(np.uint8)
    out = resize_tile(image, size)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    reference = F.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0].permute(1, 2, 0)
    assert np.abs(out - reference.numpy()).mean() < 2.0


def test_resizing_to_the_same_size_copies() -> None:
    tile = np.full((64, 64, 3), 7, dtype=np.uint8)
    tile.flags.writeable = False
    out = resize_tile(tile, 64)
    assert np.array_equal(out, tile)
    assert out.flags.writeable


def test_collate_matches_default_collate() -> None:
    batch = [(i, IMAGE + i, (IMAGE[..., 0] + i, torch.full((2,), i))) for i in range(3)]
    ours, reference = collate(batch), default_collate(batch)
    assert torch.equal(ours[0], reference[0])
    assert torch.equal(ours[1], reference[1])
    assert ours[1].dtype == torch.uint8
    assert torch.equal(ours[2][0], reference[2][0])
    assert torch.equal(ours[2][1], reference[2][1])


def test_collate_reads_read_only_views() -> None:
    frozen = np.array(IMAGE)
    frozen.flags.writeable = False
    out = collate([frozen, frozen[::-1]])
    assert torch.equal(out[1], torch.from_numpy(np.array(IMAGE[::-1])))


def test_collate_of_unequal_shapes_fails_like_default_collate() -> None:
    with pytest.raises(RuntimeError):
        collate([IMAGE, IMAGE[:3]])


class Tiles(torch.utils.data.Dataset[np.ndarray]):
    def __init__(self, count: int = 4) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        return IMAGE + index


def test_a_worker_batch_arrives_in_shared_memory() -> None:
    loader = DataLoader(
        Tiles(), batch_size=2, num_workers=1, collate_fn=collate, worker_init_fn=seed_worker
    )
    batches = list(loader)
    assert all(batch.is_shared() for batch in batches)
    assert torch.equal(
        torch.cat(batches), torch.from_numpy(np.stack([IMAGE + i for i in range(4)]))
    )


def test_a_worker_reuses_its_ring_of_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders, "get_worker_info", lambda: object())  # as inside a worker
    ring = Collate(ring_slots=3)
    batches = [ring([IMAGE + i, IMAGE]) for i in range(7)]
    pointers = [batch.data_ptr() for batch in batches]
    assert len(set(pointers)) == 3
    assert pointers[:3] == pointers[3:6]
    assert batches[0].is_shared()
    assert torch.equal(batches[6][0], torch.from_numpy(IMAGE + 6))
    # Another field or shape has its own ring.
    assert ring([IMAGE[:2]] * 2).data_ptr() not in pointers


def test_ring_batches_stay_intact_until_the_next_step() -> None:
    prefetch = 2
    loader = DataLoader(
        Tiles(count=40),
        batch_size=2,
        num_workers=2,
        prefetch_factor=prefetch,
        collate_fn=Collate.for_prefetch(prefetch),
        worker_init_fn=seed_worker,  # forked after Prefect ran in this process: see its doc
    )
    previous = None
    for number, batch in enumerate(loader):
        want = torch.from_numpy(np.stack([IMAGE + 2 * number, IMAGE + 2 * number + 1]))
        assert torch.equal(batch, want)
        if previous is not None:  # the batch of the step before is still what it was
            assert torch.equal(previous, want - 2)
        previous = batch
