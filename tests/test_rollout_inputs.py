"""select / repeat_inputs on videos of unequal size: each sample must keep exactly its own video rows."""
import torch

from vcap.grpo.rollout import repeat_inputs, select, video_rows

GRIDS = [[1, 2, 2], [2, 2, 2], [1, 2, 4], [3, 2, 2]]  # 4, 8, 8 and 12 patch rows


def batch():
    """Each sample's patch rows hold its own index, so a mixed-up row is visible."""
    grid = torch.tensor(GRIDS)
    rows = grid.prod(dim=-1)
    pixels = torch.cat([torch.full((int(n), 3), float(i)) for i, n in enumerate(rows)])
    pixels += torch.arange(len(pixels)).unsqueeze(1) * 1e-3  # row order matters too
    ids = torch.arange(4 * 5).view(4, 5)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids),
            "pixel_values_videos": pixels, "video_grid_thw": grid}


def rows_of(inputs, i):
    offsets = [0, *video_rows(inputs).cumsum(0).tolist()]
    return inputs["pixel_values_videos"][offsets[i]:offsets[i + 1]]


def test_select_keeps_each_samples_own_rows():
    full = batch()
    for start, stop in [(0, 1), (1, 3), (2, 4), (3, 4), (0, 4)]:
        part = select(full, start, stop)
        assert part["video_grid_thw"].tolist() == GRIDS[start:stop]
        assert torch.equal(part["input_ids"], full["input_ids"][start:stop])
        assert len(part["pixel_values_videos"]) == sum(torch.tensor(GRIDS[start:stop]).prod(-1).tolist())
        for j, i in enumerate(range(start, stop)):
            assert torch.equal(rows_of(part, j), rows_of(full, i))


def test_repeat_inputs_groups_copies_of_each_sample():
    full = batch()
    rep = repeat_inputs(full, 3)
    order = [i for i in range(4) for _ in range(3)]  # a a a b b b ..., never a b c d a b c d
    assert rep["video_grid_thw"].tolist() == [GRIDS[i] for i in order]
    assert torch.equal(rep["input_ids"], full["input_ids"][order])
    for j, i in enumerate(order):
        assert torch.equal(rows_of(rep, j), rows_of(full, i))
    # selecting a group back out of the repeated batch gives the original sample's rows
    group = select(rep, 3, 6)
    assert all(torch.equal(rows_of(group, k), rows_of(full, 1)) for k in range(3))
    assert repeat_inputs(full, 1)["pixel_values_videos"] is full["pixel_values_videos"]
