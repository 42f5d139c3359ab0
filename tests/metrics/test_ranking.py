import math
import os
import queue
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lsvcr.metrics.ranking import NO_RANK, RankingMetrics, ranks_multi, ranks_single, reduce_state

# --- ranks --------------------------------------------------------------------------------------


def test_ranks_single_hand_values_and_pessimistic_ties():
    scores = torch.tensor(
        [
            [0.5, 0.9, 0.5, 0.1],  # one higher, one tie -> rank 3
            [1.0, 1.0, 1.0, 1.0],  # constant model -> last, never first
            [0.2, 0.1, 0.3, 0.0],  # target col 2 is the best -> rank 1
        ]
    )
    ranks = ranks_single(scores, torch.tensor([0, 2, 2]))
    assert ranks.tolist() == [3, 4, 1]
    assert ranks.dtype == torch.int64


def test_ranks_single_ignores_invalid_columns():
    # column 0 is the padding item of full ranking, with the highest score; columns 4-5 are padding
    scores = torch.tensor([[9.0, 0.3, 0.5, 0.4, 7.0, 7.0]])
    valid = torch.tensor([[False, True, True, True, False, False]])
    assert ranks_single(scores, torch.tensor([3]), valid).tolist() == [2]
    assert ranks_single(scores, torch.tensor([3])).tolist() == [5]
    with pytest.raises(ValueError, match="target column is marked invalid"):
        ranks_single(scores, torch.tensor([0]), valid)


def test_ranks_single_nan_is_pessimistic():
    scores = torch.tensor([[0.5, float("nan"), 0.1], [float("nan"), 0.2, 0.1]])
    assert ranks_single(scores, torch.tensor([0, 0])).tolist() == [2, 3]


def test_ranks_multi_hand_values():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.7], [1.0, 1.0, 1.0, 1.0, 1.0]])
    pos = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]], dtype=torch.bool)
    r = ranks_multi(scores, pos)
    # row 0: negative 0.9 above all; positive 0.7 second; tied positives 0.5 take slots 3 and 4
    # row 1: all tied, the 3 negatives first, then the positives in column order
    assert r.tolist() == [[3, NO_RANK, 4, NO_RANK, 2], [NO_RANK, 4, NO_RANK, 5, NO_RANK]]


def test_ranks_multi_ignores_invalid_and_rejects_invalid_positive():
    scores = torch.tensor([[5.0, 0.2, 0.9, 0.4, 5.0]])
    pos = torch.tensor([[0, 1, 0, 1, 0]], dtype=torch.bool)
    valid = torch.tensor([[False, True, True, True, False]])
    assert ranks_multi(scores, pos, valid).tolist() == [[NO_RANK, 3, NO_RANK, 2, NO_RANK]]
    with pytest.raises(ValueError, match="positive column is marked invalid"):
        ranks_multi(scores, valid & False | torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool), valid)


def test_ranks_multi_best_positive_matches_ranks_single():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (64, 30), generator=g).float()  # many ties
    valid = torch.rand(64, 30, generator=g) > 0.2
    target = torch.randint(0, 30, (64,), generator=g)
    valid[torch.arange(64), target] = True
    one_hot = torch.zeros(64, 30, dtype=torch.bool)
    one_hot[torch.arange(64), target] = True
    single = ranks_single(scores, target, valid)
    assert torch.equal(ranks_multi(scores, one_hot, valid).min(1).values, single)
    # with extra positives the best rank can only improve, and ranks stay distinct
    pos = one_hot | ((torch.rand(64, 30, generator=g) > 0.7) & valid)
    multi = ranks_multi(scores, pos, valid)
    assert (multi.min(1).values <= single).all()
    for row, p in zip(multi, pos):
        assert len(set(row[p].tolist())) == int(p.sum())


# --- metrics ------------------------------------------------------------------------------------


def test_single_positive_metrics_by_hand():
    m = RankingMetrics()
    m.update(torch.tensor([1, 3, 7, 12]))
    out = m.compute()
    assert out["count"] == 4 and out["skipped"] == 0
    assert out["recall@1"] == 0.25 and out["recall@5"] == 0.5 and out["recall@10"] == 0.75
    assert out["hit@1"] == 0.25 and out["hit@5"] == 0.5 and out["hit@10"] == 0.75
    # rank r contributes 1/log2(r+1): 1, 1/log2(4) = 0.5, 1/log2(8) = 1/3
    assert out["ndcg@5"] == pytest.approx((1 + 0.5) / 4)
    assert out["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert out["mrr@5"] == pytest.approx((1 + 1 / 3) / 4)
    assert out["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)


def test_multi_positive_metrics_by_hand():
    m = RankingMetrics(ks=(1, 5), ndcg_ks=(5,), mrr_ks=(5,))
    m.update(torch.tensor([[2, 4, 20]]), torch.tensor([3]))
    out = m.compute()
    assert out["recall@1"] == 0 and out["hit@1"] == 0
    assert out["recall@5"] == pytest.approx(2 / 3) and out["hit@5"] == 1
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert out["ndcg@5"] == pytest.approx(dcg / idcg)
    assert out["mrr@5"] == 0.5


def test_idcg_uses_min_of_positives_and_k_and_num_pos_counts_unranked():
    m = RankingMetrics(ks=(10,), ndcg_ks=(10,), mrr_ks=(10,))
    m.update(torch.arange(1, 13).unsqueeze(0))  # 12 positives at ranks 1..12
    out = m.compute()
    assert out["ndcg@10"] == pytest.approx(1.0) and out["recall@10"] == pytest.approx(10 / 12)
    m = RankingMetrics(ks=(5,), ndcg_ks=(5,), mrr_ks=(5,))
    # 4 positives, only 2 of them among the candidates (ranks 1 and 3)
    m.update(torch.tensor([[1, 3, NO_RANK, NO_RANK]]), torch.tensor([4]))
    out = m.compute()
    assert out["recall@5"] == 0.5
    assert out["ndcg@5"] == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5)))


def test_samples_without_positives_are_skipped():
    m = RankingMetrics()
    m.update(torch.tensor([[1, NO_RANK], [NO_RANK, NO_RANK], [2, NO_RANK]]))
    out = m.compute()
    assert out["count"] == 2 and out["skipped"] == 1
    assert out["recall@1"] == 0.5 and out["mrr@5"] == 0.75
    assert math.isnan(RankingMetrics().compute()["ndcg@5"])


def test_constant_scores_give_zero_metrics():
    scores = torch.zeros(8, 100)
    m = RankingMetrics()
    m.update(ranks_single(scores, torch.zeros(8, dtype=torch.long)))
    assert all(v == 0 for k, v in m.compute().items() if "@" in k)


def test_rank_below_one_rejected():
    with pytest.raises(ValueError, match="1-based"):
        RankingMetrics().update(torch.tensor([0]))


def test_merge_equals_concatenated():
    g = torch.Generator().manual_seed(1)
    ranks = torch.randint(1, 15, (40, 3), generator=g)
    ranks[ranks > 12] = NO_RANK
    num_pos = torch.randint(0, 5, (40,), generator=g)
    full = RankingMetrics()
    full.update(ranks, num_pos)
    a, b = RankingMetrics(), RankingMetrics()
    a.update(ranks[:13], num_pos[:13])
    b.update(ranks[13:25], num_pos[13:25])
    b.update(ranks[25:], num_pos[25:])
    a.merge(b.state())
    for key, value in full.compute().items():
        assert a.compute()[key] == pytest.approx(value, nan_ok=True)
    with pytest.raises(ValueError, match="different keys"):
        a.merge(RankingMetrics(ks=(3,)).state())


def test_reduce_state_is_identity_without_distributed():
    assert not dist.is_initialized()
    state = {"recall@1": 2.0, "count": 3.0}
    assert reduce_state(state) == state


def _reduce_worker(rank: int, init_file: str, results) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=30)
    )
    try:
        m = RankingMetrics(ks=(1,), ndcg_ks=(), mrr_ks=())
        m.update(torch.tensor([1, 2, 3]) if rank == 0 else torch.tensor([1]))
        results.put((rank, m.synced().compute()))
    finally:
        dist.destroy_process_group()


def test_reduce_state_sums_across_two_processes(tmp_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    init = str(tmp_path / "init")
    procs = [ctx.Process(target=_reduce_worker, args=(r, init, results), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=90) for _ in procs)
    except queue.Empty:
        pytest.fail("distributed workers did not report within 90 s")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                os.kill(p.pid, 9)
    # 4 samples in all, 2 at rank 1: the summed mean is 0.5; averaging the per-process means would give 2/3
    for rank in (0, 1):
        assert got[rank]["count"] == 4 and got[rank]["recall@1"] == 0.5
