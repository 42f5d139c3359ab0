"""The task objects (lsvcr/tasks.py): built from conf/task by _target_, they own the checks, the
training batches, the loss and the evaluation ranking of their task."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import REPO, TINY, run_cli
from lsvcr.data.batch import CommRankBatch, RecBatch
from lsvcr.data.history import HistoryGatherer
from lsvcr.data.loader import CommRankBatches, RecBatches, SequenceBatches
from lsvcr.errors import ConfigError
from lsvcr.losses.recommend import comm_rank_task_loss, rec_task_loss, sequence_task_loss
from lsvcr.metrics.evaluator import CommentRanking, VideoRanking
from lsvcr.models.sr.lsvcr import LSVCR
from lsvcr.models.sr.sasrec import SASRec
from lsvcr.tasks import TASK_CLASSES, CommRankTask, JointTask, RecTask, Task, TrainSpec, build_task, task_named


def _node(name: str):
    return OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")


@pytest.mark.parametrize("name, cls", [("rec", RecTask), ("comm_rank", CommRankTask), ("joint", JointTask)])
def test_every_task_config_builds_its_class(name, cls):
    task = build_task(_node(name))
    assert type(task) is cls and task.name == name == _node(name).name
    assert set(TASK_CLASSES) == {p.stem for p in (REPO / "conf" / "task").glob("*.yaml")}


def test_a_task_node_that_disagrees_with_its_class_is_refused():
    bad = _node("rec")
    bad.name = "comm_rank"
    with pytest.raises(ConfigError, match="task.name=comm_rank but task._target_=lsvcr.tasks.RecTask is task rec"):
        build_task(bad)
    with pytest.raises(ConfigError, match="no _target_"):
        build_task(OmegaConf.create({"name": "rec", "neg_num": -1}))
    with pytest.raises(ConfigError, match="not a task class"):
        build_task(OmegaConf.create({"_target_": "lsvcr.tasks.TrainSpec", "batch_size": 1, "seed": 0}))
    with pytest.raises(ConfigError, match="task._target_=lsvcr.tasks.NoSuchTask: "):
        build_task(OmegaConf.create({"_target_": "lsvcr.tasks.NoSuchTask"}))
    with pytest.raises(ConfigError, match="at least one negative"):
        build_task(OmegaConf.merge(_node("comm_rank"), {"neg_num": 0}))
    with pytest.raises(ConfigError, match="expected one of rec, comm_rank, joint"):
        task_named("ctr")


def test_stages_and_sample_sets():
    assert [t.sample_sets for t in (RecTask(), CommRankTask(), JointTask())] == [("rec",), ("comm_rank",),
                                                                               ("rec", "comm_rank")]
    RecTask().check_stage("finetune", "unused")
    with pytest.raises(ConfigError, match="task=joint: fine-tuning trains one task"):
        JointTask().check_stage("finetune", "fine-tuning trains one task")
    assert JointTask().ranking is None and isinstance(RecTask().ranking, VideoRanking)
    assert isinstance(CommRankTask().ranking, CommentRanking)


def test_a_task_refuses_an_sr_that_does_not_answer_it():
    sasrec, no_text = SASRec(10, hidden_size=8, inner_size=8), LSVCR(10, hidden_size=8, inner_size=8, use_text=False)
    for sr in (sasrec, no_text):
        RecTask().check_sr(sr, "x")
        with pytest.raises(ConfigError, match="cannot do task=comm_rank; use task=rec"):
            CommRankTask().check_sr(sr, "x")
    CommRankTask().check_sr(LSVCR(10, hidden_size=8, inner_size=8), "lsvcr")


def test_each_task_builds_its_own_batches_and_loss(small_world):
    ds, _ = small_world
    g = HistoryGatherer(ds, 50, 50)
    sr = LSVCR(ds.num_videos, hidden_size=8, inner_size=8)
    rec = RecTask(neg_num=4).train_batches(ds, g, sr, TrainSpec(batch_size=16, seed=0))
    comm = CommRankTask(neg_num=3).train_batches(ds, g, sr, TrainSpec(batch_size=16, seed=0))
    assert type(rec) is RecBatches and type(comm) is CommRankBatches
    rb, cb = next(iter(rec)), next(iter(comm))
    assert isinstance(rb, RecBatch) and rb.candidates.shape == (16, 5)
    assert isinstance(cb, CommRankBatch) and cb.candidates.shape == (16, 4)
    assert RecTask().task_loss() is rec_task_loss and RecTask().task_loss("sequences") is sequence_task_loss
    assert CommRankTask().task_loss() is comm_rank_task_loss
    with pytest.raises(ConfigError, match="finetune.train_on=sequences trains a causal SR on task=rec"):
        CommRankTask().train_batches(ds, g, sr, TrainSpec(batch_size=16, seed=0, train_on="sequences"))
    with pytest.raises(ConfigError, match="model.sr.position_align=start"):
        RecTask().train_batches(ds, g, sr, TrainSpec(batch_size=16, seed=0, train_on="sequences"))
    seq = RecTask().train_batches(ds, g, SASRec(ds.num_videos, hidden_size=8, inner_size=8),
                                  TrainSpec(batch_size=16, seed=0, train_on="sequences", max_len=8))
    assert type(seq) is SequenceBatches and seq.max_len == 8
    with pytest.raises(ConfigError, match="expected one of samples, sequences"):
        TrainSpec(batch_size=16, seed=0, train_on="windows")


def test_check_data_refuses_comment_tasks_without_comment_interactions(small_world):
    ds, _ = small_world
    for task in (RecTask(), CommRankTask(), JointTask()):
        task.check_data(ds, "synthetic")  # the world has comment interactions

    class NoComments:
        manifest = {"counts": {"comment_interactions": 0}}
        num_comments, root = 7, "/data/x"

    RecTask().check_data(NoComments(), "x")
    for task in (CommRankTask(), JointTask()):
        with pytest.raises(ConfigError, match=f"task={task.name} ranks comments, but data=x has no comment inter"):
            task.check_data(NoComments(), "x")


def test_a_task_is_a_task():
    assert all(issubclass(cls, Task) for cls in TASK_CLASSES.values())
    assert repr(RecTask(neg_num=9)) == "RecTask(neg_num=9)"


@pytest.mark.parametrize("stage", ["evaluate", "finetune"])
def test_joint_is_refused_by_the_single_task_stages(tmp_path, stage):
    r = run_cli([f"stage={stage}", "task=joint", "model/sr=popularity" if stage == "evaluate" else "model/sr=lsvcr",
                 *TINY], tmp_path)
    assert r.returncode == 2 and "task=joint:" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
