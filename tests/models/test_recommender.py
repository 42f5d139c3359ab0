"""The Recommender's frozen text tables: memory-mapped files, outside the module's state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lsvcr.models.recommender import Recommender, frozen_table
from lsvcr.models.sr.lsvcr import LSVCR


def _mapping_of(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``path`` (Linux ``/proc/self/maps``)."""
    spans = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi))
    return spans


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_a_float32_table_file_is_mapped_not_copied(tmp_path):
    path = tmp_path / "comments.npy"
    rows = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    np.save(path, rows)
    table = frozen_table(np.load(path, mmap_mode="r"))
    assert table.dtype == torch.float32 and torch.equal(table, torch.from_numpy(rows))
    spans = _mapping_of(path.resolve())
    assert any(lo <= table.data_ptr() < hi for lo, hi in spans), "the tensor is not the file's mapping"
    table[1, 0] = 123.0  # copy-on-write: this process's page changes, the file does not
    assert np.load(path)[1, 0] == rows[1, 0]


def test_other_tables_are_converted_to_float32(tmp_path):
    path = tmp_path / "videos.npy"
    np.save(path, np.arange(12, dtype=np.float16).reshape(4, 3))
    table = frozen_table(np.load(path, mmap_mode="r"))
    assert table.dtype == torch.float32 and table.tolist() == np.arange(12).reshape(4, 3).tolist()
    assert frozen_table(np.ones((2, 2))).dtype == torch.float32


def test_tables_are_neither_buffers_nor_checkpointed_and_stay_in_place():
    torch.manual_seed(0)
    video, comment = torch.randn(11, 16), torch.randn(31, 16)
    model = Recommender(LSVCR(10, llm_emb_size=16), video, comment)
    assert [name for name, _ in model.named_buffers() if "table" in name] == []
    assert not any("table" in key for key in model.state_dict())
    model.to(torch.device("cpu"))
    assert model.video_table is video and model.comment_table is comment  # .to() leaves them alone
    model.eval()
    reps = model.all_videos()
    model.place_tables("cpu")
    assert model.video_table.data_ptr() == video.data_ptr()  # already there: no copy
    assert torch.equal(model.all_videos(), reps)
