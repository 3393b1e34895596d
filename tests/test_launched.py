"""Training followed from another process (workbench.core.training.launched): a stop request file in the run
folder stops a trainer before its next step, and the ranks' errors reach the follower with their message.
(A launch that trains, stops and resumes is exercised from the window in tests/gui/test_distributed_gui.py.)"""

from __future__ import annotations

import multiprocessing

import pytest

from conftest import tiny_dataset_config
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.core.training.launched import LaunchedTraining
from workbench.core.training.trainer import STOP_REQUEST


def test_a_stop_request_in_the_run_folder_stops_before_the_next_step_and_is_taken(tmp_path):
    trainer = Trainer(tiny_dataset_config(training={"steps": 50, "val_interval": 0}), RunStore(tmp_path))
    request = trainer.run.path / STOP_REQUEST
    final = trainer.run_all(lambda record: record.event == "step" and record.step == 3 and request.touch())
    assert (final.event, final.step) == ("stopped", 3) and "by the user" in final.message
    assert trainer.run.record().status == "stopped" and not request.exists()


def test_a_config_the_processes_cannot_split_is_refused_before_any_starts(tmp_path):
    config = tiny_dataset_config(training={"meta_batch": 3})
    with pytest.raises(ConfigError, match="training.meta_batch"):
        LaunchedTraining(config, tmp_path, nproc=2)
    assert multiprocessing.active_children() == [] and RunStore(tmp_path).list() == []


def test_an_error_in_the_ranks_reaches_the_follower_with_its_message(tmp_path):
    config = tiny_dataset_config(dataset={"name": "omniglot", "root": str(tmp_path / "missing"), "download": False,
                                          "image_size": 16, "ways": 3, "shots": 1, "queries": 2},
                                 training={"meta_batch": 2})
    with pytest.raises(WorkbenchError, match="Omniglot was not found in .*missing"):
        LaunchedTraining(config, tmp_path / "home", nproc=2)
    assert multiprocessing.active_children() == [] and RunStore(tmp_path / "home").list() == []
