"""finetune.train_on=sequences: every training target labelled exactly once, with the context the
sample-wise training gives it; the same loss as sample-wise training when windows slide by one;
and SASRec trained this way beats popularity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import TINY, run_cli
from lsvcr.data.builder import write_dataset
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.loader import RecBatches, SequenceBatches
from lsvcr.data.samples import SplitConfig
from lsvcr.data.store import PreparedDataset
from lsvcr.data.synthetic import SyntheticConfig, generate
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import FinetuneLoss, rec_task_loss, sequence_task_loss
from lsvcr.models.recommender import Recommender
from lsvcr.models.sr.lsvcr import LSVCR
from lsvcr.models.sr.sasrec import SASRec

L = 8  # a short window, so users' sequences need several


@pytest.fixture(scope="module")
def video_only(tmp_path_factory):
    """A synthetic world without its comment side (as a RecBole dataset has none), prepared with
    RecBole's positional history order."""
    raw, _ = generate(SyntheticConfig(num_users=120, num_videos=150, seed=3))
    raw.comments = raw.comments.slice(0, 0)
    raw.comment_interactions = raw.comment_interactions.slice(0, 0)
    path = write_dataset(raw, tmp_path_factory.mktemp("vo") / "ds", SplitConfig("loo"), history_ties="sorted_order")
    return PreparedDataset(path)


def _labels(sb: SequenceBatches):
    """(label video, its input context as a tuple) for every trained position of every window."""
    b = sb.batch(np.arange(len(sb.w_start)))
    out = []
    for row in range(b.ids.shape[0]):
        for j in np.flatnonzero(b.labels[row].numpy()):
            out.append((int(b.labels[row, j]), tuple(b.ids[row, : j + 1].tolist())))
    return out


@pytest.mark.parametrize("stride", [L, 3, 1])
def test_every_target_once_with_its_history(video_only, stride):
    ds = video_only
    samples = ds.samples("rec", "train")
    sb = SequenceBatches(ds, samples, L, stride, batch_size=16, seed=0)
    got = _labels(sb)
    assert sb.dropped == 0 and sb.num_targets == len(samples) == len(got)
    hist = HistoryGatherer(ds, L, L)(samples, np.arange(len(samples)))
    expected = []
    for i in range(len(samples)):
        row = hist.v_video[i]
        expected.append((int(samples.target[i]), tuple(row[row > 0].tolist())))
    # each label's context is the tail of the history a sample would get (all of it with stride 1;
    # at least max_len - stride videos otherwise)
    got_sorted, exp_sorted = sorted(got), sorted(expected)
    by_target: dict[int, list] = {}
    for t, ctx in expected:
        by_target.setdefault(t, []).append(ctx)
    if stride == 1:
        assert got_sorted == exp_sorted
    else:
        assert sorted(t for t, _ in got) == sorted(t for t, _ in expected)
        for t, ctx in got:
            assert any(full[len(full) - len(ctx):] == ctx for full in by_target[t])
            assert len(ctx) >= min(L - stride + 1, min(len(f) for f in by_target[t]))


def test_ranks_split_the_windows(video_only):
    ds, samples = video_only, video_only.samples("rec", "train")
    one = SequenceBatches(ds, samples, L, None, 7, seed=1)
    parts = [SequenceBatches(ds, samples, L, None, 7, seed=1, rank=r, world=2) for r in range(2)]
    for sb in (one, *parts):
        sb.set_epoch(2)
    orders = [p.order() for p in parts]
    assert len(parts[0]) == len(parts[1]) == -(-(len(one.w_start) // 2) // 7)
    assert not set(orders[0]) & set(orders[1]) and len(orders[0]) == len(orders[1]) == len(one.w_start) // 2
    assert sorted(np.concatenate(orders)) == sorted(one.order()[: 2 * len(orders[0])])
    first = next(iter(parts[1]))
    np.testing.assert_array_equal(first.ids.numpy(), parts[1].batch(orders[1][:7]).ids.numpy())
    parts[0].set_epoch(3)
    assert not np.array_equal(parts[0].order(), orders[0])  # a new shuffle per epoch
    with pytest.raises(ConfigError, match="finetune.sequence_stride=0"):
        SequenceBatches(ds, samples, L, 0, 7, seed=1)


def _sasrec(ds) -> Recommender:
    return Recommender(SASRec(ds.num_videos, hidden_size=16, num_heads=2, inner_size=32, dropout=0.0,
                              attn_dropout=0.0, max_position=L), None, None, None)


def _lsvcr(ds, dropout: float = 0.0) -> Recommender:
    """LSVCR's video stream alone (as on a dataset without comments), positions from the oldest
    item, random text tables (the comment table is padding only: the world has no comments)."""
    g = torch.Generator().manual_seed(1)
    sr = LSVCR(ds.num_videos, llm_emb_size=12, hidden_size=16, num_heads=2, inner_size=32, dropout=dropout,
               attn_dropout=dropout, max_position=L, use_comment_history=False, position_align="start")
    return Recommender(sr, torch.randn(ds.num_videos + 1, 12, generator=g), torch.zeros(ds.num_comments + 1, 12),
                       None)


@pytest.mark.parametrize("build", [_sasrec, _lsvcr], ids=["sasrec", "lsvcr"])
def test_sliding_by_one_is_sample_training(video_only, build):
    """With stride 1 and no dropout, the sequence loss over all windows equals the sample-wise
    full-softmax loss over all training samples: same targets, same histories, same positions
    (LSVCR: its pooling over each prefix's causal states is the user representation of that
    prefix's sample)."""
    ds = video_only
    samples = ds.samples("rec", "train")
    torch.manual_seed(0)
    model = build(ds).eval()
    sb = SequenceBatches(ds, samples, L, 1, batch_size=10_000, seed=0)
    seq = model(sb.batch(np.arange(len(sb.w_start))), FinetuneLoss(sequence_task_loss, 0.0))["loss"]
    tb = RecBatches(ds, samples, HistoryGatherer(ds, L, L), 10_000, -1, seed=0)
    rec = model(next(iter(tb)), FinetuneLoss(rec_task_loss, 0.0))["loss"]
    assert len(tb) == 1
    torch.testing.assert_close(seq, rec, rtol=1e-5, atol=1e-5)


def test_lsvcr_learns_on_sequences(video_only):
    """LSVCR's video stream trained on windows, with dropout and its ID-text term: both losses fall,
    and refusing a model whose prefixes are not the sequence's (comment stream, end positions)."""
    ds = video_only
    torch.manual_seed(0)
    model = _lsvcr(ds, dropout=0.1).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sb = SequenceBatches(ds, ds.samples("rec", "train"), L, 4, batch_size=32, seed=0)
    means = []
    for epoch in range(6):
        sb.set_epoch(epoch)
        losses = []
        for batch in sb:
            out = model(batch, FinetuneLoss(sequence_task_loss, 0.1))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append([out["task_loss"].item(), out["id_text_loss"].item()])
        means.append(np.mean(losses, axis=0))
    first, last = means[0], means[-1]
    assert last[0] < first[0] - 0.2 and last[1] < first[1], (first, last)
    for kwargs in ({"use_comment_history": True}, {"position_align": "end"}):
        sr = LSVCR(ds.num_videos, llm_emb_size=12, hidden_size=16, max_position=L,
                   **{"use_comment_history": False, "position_align": "start", **kwargs})
        assert not sr.trains_on_sequences
        with pytest.raises(ValueError, match="trains on whole sequences only"):
            sr.sequence_users(model.sequence_inputs(sb.batch(np.arange(4))))


@pytest.mark.slow
def test_sasrec_on_sequences_beats_popularity(tmp_path):
    p = run_cli(["stage=evaluate", "task=rec", "model/sr=popularity", *TINY], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    pop = json.loads(max(tmp_path.rglob("metrics.json"), key=lambda f: f.stat().st_mtime).read_text())
    p = run_cli(["stage=finetune", "task=rec", "model/sr=sasrec", "finetune.train_on=sequences", "finetune.epochs=6",
                 "finetune.batch_size=32", "optim.lr=3e-3", "finetune.patience=8", *TINY], tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sequence windows" in p.stdout + p.stderr
    sas = json.loads(max(tmp_path.rglob("metrics.json"), key=lambda f: f.stat().st_mtime).read_text())
    assert sas["model"] == "sasrec"
    got, base = sas["results"]["test"]["full"]["ndcg@10"], pop["results"]["test"]["full"]["ndcg@10"]
    assert got > 1.5 * base, (got, base)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["model/sr=lsvcr"], "finetune.train_on=sequences trains a causal SR on task=rec"),
    (["model/sr=lsvcr", "model.sr.use_comment_history=false"], "model.sr.position_align=start"),
    (["model/sr=sasrec", "task.neg_num=9"], "set task.neg_num=-1"),
    (["model/sr=sasrec", "finetune.train_on=windows"], "finetune.train_on=windows: expected one of samples, sequences"),
])
def test_sequence_training_refusals(tmp_path, args, message):
    p = run_cli(["stage=finetune", "task=rec", "finetune.train_on=sequences", "finetune.epochs=1", *TINY, *args],
                tmp_path)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]
