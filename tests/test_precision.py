"""Mixed precision: what ``auto`` resolves to (and the fallback on hardware without bfloat16, simulated), autocast
confined to the backbones with float32 features and statistics, one bfloat16 meta-step of every classification
algorithm against its float32 step, float32 checkpoints, the config field, the CLI flags and the run's record."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from conftest import tiny_dataset_config
from workbench.core import precision
from workbench.core.algorithms import algorithm_names, get_algorithm
from workbench.core.config import ExperimentConfig
from workbench.core.errors import ConfigError
from workbench.core.models import conv4
from workbench.core.models.conv4 import Conv4
from workbench.core.models.mlp import MLPRegressor
from workbench.core.precision import Hardware, compute_in, resolve_precision
from workbench.core.training import Trainer

BF16_CPU = Hardware("cpu", "CPU", bf16=True, fp16=False, features=("AVX-512 BF16",))
PLAIN_CPU = Hardware("cpu", "CPU", bf16=False, fp16=False)


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset({"avx512_bf16"}))


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset())


# --- resolving a request ----------------------------------------------------------------------------------------
def test_auto_picks_bf16_only_for_an_algorithm_that_allows_it_on_hardware_that_has_it():
    assert resolve_precision("auto", "cpu", True, BF16_CPU).name == "bf16"
    kept = resolve_precision("auto", "cpu", False, BF16_CPU)
    assert kept.name == "fp32" and "not shown equal accuracy" in kept.reason
    assert resolve_precision("fp32", "cpu", True, BF16_CPU).dtype is None
    assert resolve_precision("bf16", "cpu", False, BF16_CPU).dtype is torch.bfloat16  # explicit: any algorithm


def test_without_bf16_units_auto_and_an_explicit_bf16_fall_back_to_fp32(cpu_without_bf16):
    hardware = precision.detect_hardware("cpu")
    assert not hardware.bf16 and "no AMX" in hardware.features
    auto = resolve_precision("auto", "cpu", True)
    assert (auto.name, auto.dtype) == ("fp32", None) and "no bfloat16 units" in auto.reason
    asked = resolve_precision("bf16", "cpu", True)
    assert asked.name == "fp32" and "bf16 was asked for" in asked.reason
    fp16 = resolve_precision("fp16", "cpu", True)
    assert fp16.name == "fp32" and "float16" in fp16.reason


def test_detection_reads_avx512_bf16_and_amx(monkeypatch):
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset({"avx512_bf16"}))
    assert precision.detect_hardware("cpu").bf16
    monkeypatch.setattr(precision, "cpu_features", lambda: frozenset({"amx_tile", "amx_bf16"}))
    hardware = precision.detect_hardware("cpu")
    assert hardware.bf16 and "AMX" in hardware.features and "no AMX" not in hardware.features
    # The real detection runs here whatever this machine has, and agrees with /proc/cpuinfo where it says bf16.
    monkeypatch.undo()
    flags = precision._cpuinfo_flags()
    if "avx512_bf16" in flags:
        assert precision.detect_hardware("cpu").bf16


def test_an_unknown_precision_names_the_field():
    with pytest.raises(ConfigError, match="training.precision"):
        resolve_precision("half", "cpu", True, BF16_CPU)


def test_the_gui_choices_say_what_each_resolves_to():
    choices = dict((value, label) for value, label, _ in precision.choices_for("cpu", True, PLAIN_CPU))
    assert list(choices) == list(precision.PRECISION_CHOICES)
    assert choices["auto"] == "Automatic: fp32" and "not supported here" in choices["bf16"]
    assert dict((v, label) for v, label, _ in precision.choices_for("cpu", True, BF16_CPU))["bf16"] == "bf16"


def test_protonet_declares_reduced_precision_and_unmeasured_algorithms_do_not():
    assert get_algorithm("protonet").auto_reduced_precision
    assert get_algorithm("protonet").info()["auto_reduced_precision"] is True
    assert not get_algorithm("relation-net").auto_reduced_precision  # the default: float32


# --- autocast only in the backbones -----------------------------------------------------------------------------
def conv_output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    return dtypes


def test_the_backbone_computes_in_bf16_and_returns_float32_features():
    torch.manual_seed(0)
    model = Conv4(hidden=8, image_size=16)
    dtypes = conv_output_dtypes(model)
    x = torch.randn(20, 1, 16, 16)
    with compute_in(torch.bfloat16):
        features = model(x)
        loss = features.pow(2).sum()  # outside the backbone: float32
    assert features.dtype == torch.float32 and loss.dtype == torch.float32
    assert dtypes == [torch.bfloat16] * 3  # blocks 2-4; the first block's convolution is folded (no module call)
    dtypes.clear()
    assert model(x).dtype == torch.float32 and dtypes == [torch.float32] * 3  # no scope: float32
    # Float64 (gradient checks) is never cast.
    assert Conv4(hidden=8, image_size=16).double()(x.double()).dtype == torch.float64


def test_the_mlp_backbone_follows_the_scope_too():
    model = MLPRegressor(hidden=8)
    hidden = []
    model.features[0].register_forward_hook(lambda _m, _i, out: hidden.append(out.dtype))
    with compute_in(torch.bfloat16):
        assert model(torch.randn(5, 1)).dtype == torch.float32
    assert hidden == [torch.bfloat16]


def test_the_folded_batch_norm_keeps_float32_statistics():
    """The first block's statistics come from the float32 covariance of its input, so a bf16 pass updates the
    running statistics exactly as a float32 pass does, and its output is batch norm's to bf16 rounding, even for
    images far from zero mean (the convolution is centred before rounding)."""
    torch.manual_seed(0)
    block = conv4.conv_block(1, 16)
    block.train()
    reference = copy.deepcopy(block)
    x = torch.randn(24, 1, 12, 12) + 6.0
    conv, norm = block[0], block[1]
    assert conv4.can_fold_batch_norm(x, conv, norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, shift = conv4.conv_with_folded_batch_norm(x, conv, norm)
    assert features.dtype == shift.dtype == torch.bfloat16
    expected = reference[1](reference[0](x))  # unfolded float32 batch norm
    torch.testing.assert_close((features + shift).float(), expected, atol=0.05, rtol=0.02)
    assert norm.running_mean.dtype == torch.float32
    torch.testing.assert_close(norm.running_mean, reference[1].running_mean)
    torch.testing.assert_close(norm.running_var, reference[1].running_var)


def test_channels_last_in_bf16_at_any_batch_size():
    small = torch.randn(5, 1, 8, 8)
    assert conv4.to_channels_last(small) is small  # float32: small batches keep NCHW
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv4.to_channels_last(small).stride(1) == 1


# --- one bf16 meta-step of every classification algorithm ------------------------------------------------------
# Small nets (hidden 16) on 5-way 1-shot 5-query glyph episodes; for methods whose meta-gradient sits at the end of
# several inner steps from an untrained start (FOMAML's 5 steps at lr 0.4, the Meta-LSTM's 12, ADML's 5, MAML++'s
# 5), one or two inner steps: many steps there amplify any rounding (in bf16 FOMAML's 5-step meta-gradient at
# initialization had cosine 0.55 to the float32 one; MAML++'s 5-step loss was 3% off). LEO pre-trains first; one
# pre-training step reaches its meta-step.
SMALL = {"fomaml": {"train_inner_steps": 1}, "meta-lstm": {"train_inner_steps": 2}, "adml": {"train_inner_steps": 1},
         "maml-plus-plus": {"train_inner_steps": 1}, "leo": {"pretrain_steps": 1}}
# Tolerances, at the start of training where rounding matters most: the loss within 2%; the meta-gradient's error
# (the norm of bf16 - fp32) at most 0.6 of its norm and at most half the difference that drawing another episode
# makes (noise every step carries anyway). Measured here: errors of 0.04-0.30 of the norm for most methods, 0.45
# for Meta Networks (its meta information is the support loss's gradient, log-scaled), against 1.0-1.8 for another
# episode.
LOSS_TOLERANCE = 0.02
GRADIENT_TOLERANCE = 0.6
EPISODE_NOISE_SHARE = 0.5


def classification_algorithms() -> list[str]:
    return [name for name in algorithm_names() if get_algorithm(name).supports("classification")]


def meta_gradient(algorithm) -> torch.Tensor:
    grads = [p.grad.detach().flatten().double() for module in algorithm.modules().values()
             for p in module.parameters() if p.grad is not None]
    return torch.cat(grads) if grads else torch.zeros(0, dtype=torch.float64)


def one_step(trainer, batch, dtype) -> tuple[float, torch.Tensor]:
    """A meta-step of a copy of the trainer's algorithm (the same weights, optimizer and internal state)."""
    algorithm = copy.deepcopy(trainer.algorithm)
    torch.manual_seed(0)
    with compute_in(dtype):
        out = algorithm.meta_train_step(batch)
    return float(out["loss"]), meta_gradient(algorithm)


# A deep-copied scheduler no longer recognises its optimizer's step and warns; harmless for one step.
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("name", classification_algorithms())
def test_one_bf16_meta_step_is_close_to_the_fp32_step(name, one_torch_thread):
    hparams = {**({"hidden": 16} if "hidden" in {s.name for s in get_algorithm(name).hparam_specs()} else {}),
               **SMALL.get(name, {})}
    config = tiny_dataset_config(algorithm={"name": name, "hparams": hparams}, training={"steps": 3, "precision":
                                 "fp32"}, dataset={"image_size": 28, "ways": 5, "queries": 5})
    trainer = Trainer(config)
    trainer.algorithm.train()
    batch, other = trainer._next_batch(), trainer._next_batch()
    loss32, grad32 = one_step(trainer, batch, None)
    loss16, grad16 = one_step(trainer, batch, torch.bfloat16)
    _, grad_other = one_step(trainer, other, None)
    assert math.isfinite(loss16) and bool(torch.isfinite(grad16).all())
    assert abs(loss16 - loss32) <= LOSS_TOLERANCE * max(1.0, abs(loss32)), (loss16, loss32)
    assert grad16.shape == grad32.shape and grad32.norm() > 0
    error = float((grad16 - grad32).norm())
    assert error <= GRADIENT_TOLERANCE * float(grad32.norm()), error / float(grad32.norm())
    episode_noise = float((grad_other - grad32).norm())
    if episode_noise > 0.05 * float(grad32.norm()):  # algorithms that train on their own data ignore the batch
        assert error <= EPISODE_NOISE_SHARE * episode_noise, (error, episode_noise)


# --- the trainer, checkpoints and the run's record ---------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data", "cpu_with_bf16")
def test_a_bf16_run_trains_in_bf16_and_saves_float32_checkpoints_and_its_precision():
    trainer = Trainer(tiny_dataset_config(training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2}))
    assert trainer.config.training.precision == "auto" and trainer.precision.name == "bf16"  # ProtoNet allows it
    dtypes = conv_output_dtypes(trainer.algorithm.encoder)
    final = trainer.run_all()
    assert final.event == "finished" and torch.bfloat16 in dtypes  # training and validation ran in bf16
    for kind in ("last", "best"):
        payload = trainer.run.load_checkpoint(kind)
        tensors = [t for module in payload["state"].values() for t in module.values()]
        tensors += [t for opt in payload["optimizer"]["optimizers"] for state in opt["state"].values()
                    for t in state.values() if isinstance(t, torch.Tensor)]
        assert tensors and all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
        assert payload["precision"]["precision"] == "bf16"
    record = json.loads((trainer.run.path / "precision.json").read_text())
    assert record["requested"] == "auto" and record["precision"] == "bf16" and record["hardware"]["bf16"]
    assert trainer.run.config.training.precision == "auto"  # the config keeps what was asked


@pytest.mark.usefixtures("use_synthetic_data", "cpu_without_bf16")
def test_without_bf16_a_run_stays_fp32_and_says_why():
    trainer = Trainer(tiny_dataset_config(training={"steps": 2, "val_interval": 0}))
    dtypes = conv_output_dtypes(trainer.algorithm.encoder)
    assert trainer.run_all().event == "finished"
    assert trainer.precision.name == "fp32" and set(dtypes) == {torch.float32}
    record = json.loads((trainer.run.path / "precision.json").read_text())
    assert record["precision"] == "fp32" and "no bfloat16 units" in record["reason"]


@pytest.mark.usefixtures("use_synthetic_data", "cpu_with_bf16")
def test_a_run_resumes_in_another_precision():
    trainer = Trainer(tiny_dataset_config(training={"steps": 2, "val_interval": 0}))
    trainer.run_all()
    changed = trainer.run.config.replace(training={"steps": 4, "precision": "fp32"})
    resumed = Trainer(changed, trainer.store, resume=trainer.run.id)
    assert resumed.precision.name == "fp32" and resumed.run_all().event == "finished"
    assert json.loads((resumed.run.path / "precision.json").read_text())["precision"] == "fp32"


# --- the config and the command line -----------------------------------------------------------------------------
def test_the_config_keeps_the_requested_precision():
    config = ExperimentConfig.from_dict({"training": {"precision": "bf16"}})
    assert ExperimentConfig.from_toml(config.to_toml()).training.precision == "bf16"
    assert ExperimentConfig.from_dict({}).training.precision == "auto"  # configs from before precision
    with pytest.raises(ConfigError, match="training.precision"):
        ExperimentConfig.from_dict({"training": {"precision": "fp8"}})


def test_the_cli_flags_set_and_override_the_precision():
    from workbench import cli

    parser = cli.build_parser()
    args = parser.parse_args(["train", "--precision", "bf16", "--steps", "3"])
    assert cli.config_from_args(args).training.precision == "bf16"
    assert cli.PRECISION_FLAG_CHOICES == precision.PRECISION_CHOICES
    assert parser.parse_args(["eval", "some-run", "--precision", "fp32"]).precision == "fp32"
    assert parser.parse_args(["eval", "some-run"]).precision is None  # the run's own setting
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "some-run", "--precision", "fp8"])


@pytest.mark.usefixtures("use_synthetic_data", "cpu_with_bf16")
def test_eval_resolves_the_runs_precision_unless_told(capsys):
    from workbench import cli

    trainer = Trainer(tiny_dataset_config(training={"steps": 2, "val_interval": 0}))
    trainer.run_all()
    for flag, expected in ((None, "bf16"), ("fp32", "fp32")):
        argv = ["eval", trainer.run.id, "--episodes", "3", "--no-save", "--json", "--device", "cpu"]
        assert cli.main(argv + (["--precision", flag] if flag else [])) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["precision"]["precision"] == expected


def test_a_recipe_may_set_the_precision(monkeypatch):
    from workbench.core.recipes import Recipe

    protonet = get_algorithm("protonet")
    monkeypatch.setattr(protonet, "recipes", protonet.recipes + (Recipe("bf16", "test", training={"precision":
                                                                                                  "bf16"}),))
    config = ExperimentConfig.from_dict({"algorithm": {"name": "protonet", "recipe": "bf16"}})
    assert config.training.precision == "bf16"
    flagged = ExperimentConfig.from_dict({"algorithm": {"name": "protonet", "recipe": "bf16"},
                                          "training": {"precision": "fp32"}})
    assert flagged.training.precision == "fp32"  # fields given explicitly win
