"""Checkpoints written before experiment kinds (format 1) still load and evaluate to the same accuracy.

The files in tests/data/legacy/ were made by the last commit of format 1 (ProtoNet, and Meta-Weight-Net in its
classification setting, which is now the noisy-labels kind), each with its accuracy on 50 fixed glyphs test
episodes (expected.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.core.checkpoints import payload_algorithm, read_checkpoint
from workbench.core.evaluation import evaluate_run

LEGACY = Path(__file__).parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format_1_checkpoint_evaluates_to_the_same_accuracy(name):
    path = LEGACY / f"format1-{name}.pt"
    assert read_checkpoint(path)["format"] == 1
    # The expected accuracies were measured in float32 (before the precision setting); `auto` may choose bf16 here.
    result = evaluate_run(str(path), episodes=EXPECTED[name]["episodes"], seed=EXPECTED[name]["seed"], device="cpu",
                          precision="fp32")
    assert result.accuracy == pytest.approx(EXPECTED[name]["accuracy"], abs=1e-6)
    assert result.ci95 == pytest.approx(EXPECTED[name]["ci95"], abs=1e-6)


def test_format_1_meta_weight_net_is_read_as_the_noisy_labels_kind():
    from workbench.core.runs import load_model

    loaded = load_model(LEGACY / "format1-mwn-classification.pt")
    assert payload_algorithm(loaded.payload) == "meta-weight-net"
    assert loaded.algorithm.model_spec.kind == "noisy-labels"
    assert loaded.config is not None and loaded.config.kind == "noisy-labels"
