"""What an operator sees of worker failures: a worker-group restart is printed once as one failure
(what is left of scaling.max_failures, from where training resumes), and a resumed run does not log
the replayed epoch's steps to MLflow a second time. (The kill-and-resume run itself: tests/test_train_job.py.)"""

from __future__ import annotations

import logging

from jobs.train.checkpointing import SkipLoggedSteps
from jobs.train.job import RestartReporter, failure_budget_note
from jobs.train.progress import ProgressSnapshot


def test_a_worker_group_restart_is_printed_once_as_one_failure(caplog):
    report = RestartReporter(max_failures=2)
    caplog.set_level(logging.WARNING, logger="jobs.train.job")
    first = ProgressSnapshot(worker_pids={0: 100, 1: 101}, starts_by_rank={0: 1, 1: 1})
    report(first)
    report(ProgressSnapshot(epoch=1, worker_pids={0: 100, 1: 101}, starts_by_rank={0: 1, 1: 1},
                            epochs=[{"epoch": 0}]))
    assert first.group_failures == 0 and caplog.messages == []
    # One killed worker of two: Ray Train restarts the group, so both ranks start again (4 processes).
    restarted = ProgressSnapshot(epoch=1, worker_pids={0: 200, 1: 201}, starts_by_rank={0: 2, 1: 2},
                                 epochs=[{"epoch": 0}])
    report(restarted)
    report(restarted)
    assert restarted.group_failures == 1
    assert caplog.messages == ["the training workers restarted after a failure (failure 1 of scaling.max_failures 2; "
                               "1 more can be recovered); resuming after epoch 1"]


def test_a_group_whose_restart_is_still_starting_counts_once():
    # The second group's rank 0 has posted, rank 1 not yet: still one failure, not a fraction of one.
    assert ProgressSnapshot(starts_by_rank={0: 2, 1: 1}).group_failures == 1
    assert ProgressSnapshot().group_failures == 0


def test_the_message_says_what_is_left_of_the_budget():
    assert failure_budget_note(2, 2) == "failure 2 of scaling.max_failures 2; the next one ends the run"
    assert failure_budget_note(3, -1) == "failure 3; scaling.max_failures -1: unlimited"


def test_a_resumed_run_logs_only_steps_after_the_interrupted_one(tmp_path):
    from mlflow import MlflowClient

    from registry.tracking import RankZeroLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    interrupted = RankZeroLogger(uri, run_id, rank=0)
    for step in range(1, 6):  # the run logged steps 1-5, then a worker died; the checkpoint was at step 3
        interrupted.log_metrics({"train/step_loss": 1.0 / step}, step=step)
    interrupted.log_metrics({"val/loss": 0.9}, step=0)
    resumed = SkipLoggedSteps(RankZeroLogger(uri, run_id, rank=0))
    for step in range(4, 9):
        resumed.log_metrics({"train/step_loss": 1.0 / step, "train/aux": 0.5}, step=step)
    resumed.log_metrics({"val/loss": 0.8}, step=0)  # the epoch whose summary was logged before the kill
    resumed.log_metrics({"val/loss": 0.7}, step=1)
    assert [m.step for m in client.get_metric_history(run_id, "train/step_loss")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [m.step for m in client.get_metric_history(run_id, "train/aux")] == [4, 5, 6, 7, 8]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/loss")] == [(0, 0.9), (1, 0.7)]
    other_rank = SkipLoggedSteps(RankZeroLogger(uri, run_id, rank=1))
    other_rank.log_metrics({"train/step_loss": 0.1}, step=99)  # ranks other than 0 log nothing
    assert len(client.get_metric_history(run_id, "train/step_loss")) == 8
