"""First-order MAML (Finn et al., 2017, section 5.2): MAML without the second derivatives in the meta-gradient."""

from __future__ import annotations

from dataclasses import dataclass, replace

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.maml import CLASSIFICATION_DEFAULT, MAML, SINE_PAPER, InnerLoopHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe


@dataclass
class FOMAMLHParams(InnerLoopHParams):
    """MAML's settings without ``first_order`` (always on), more inner steps by default (with one step the
    first-order meta-gradient learned far slower on Omniglot: 72% vs 82% 5-way 1-shot after 600 meta-steps, and
    extra first-order steps are cheap) and a zero head by default (bench/omniglot_time_to_accuracy.py)."""

    train_inner_steps: int = hparam(
        5, "Inner gradient steps on the support set during meta-training. First order makes them cheap; with a "
        "single step first-order MAML learns slowly.", low=1, high=20)
    head: str = hparam(
        "zero", "Start of the classifier head in each task. zero (the default here): every task starts from a zero "
        "head (the zero trick), so the first-order meta-gradient does not chase head rows tied to arbitrary label "
        "order; on Omniglot 5-way 1-shot it reached 94.5% in 20 minutes of CPU training vs 87.3% with learned. "
        "learned: one meta-learned row per training way, as in the original MAML.", choices=("learned", "zero"))


@register
class FOMAML(MAML):
    name = "fomaml"
    title = "First-order MAML"
    family = Family.OPTIMIZATION
    summary = "MAML with the meta-gradient taken at the adapted weights only: cheaper, nearly as good."
    description = ("First-order MAML (Finn, Abbeel & Levine, 2017) treats the inner-loop gradients as constants, so "
                   "the meta-gradient is simply the query-loss gradient at the adapted weights, applied to the "
                   "starting weights. It skips the backward pass through the inner loop: roughly half the time and "
                   "memory of second-order MAML per step, and on Omniglot nearly the same accuracy. Otherwise it "
                   "behaves like MAML: a Conv-4 classifier with transductive batch norm (or an MLP for regression), "
                   "fine-tuned on each support set from a meta-learned start.")
    HParams = FOMAMLHParams
    recipes = (CLASSIFICATION_DEFAULT, Recipe(
        "omniglot-20min", "Tuned here for 20 CPU minutes on Omniglot: meta-batches of 4 tasks, five first-order "
        "inner steps from a zero head, rotation classes (x4), constant outer rate, up to 6,000 steps or the time "
        "budget. 95.3% (5-way 1-shot, Lake split) after 1,200 s on the reference machine.",
        datasets=("omniglot",), recommended=True, dataset={"rotations": True},
        training={"meta_batch": 4, "steps": 6000, "lr_schedule": "constant", "val_interval": 500,
                  "val_episodes": 200}), replace(
        SINE_PAPER, help="The paper's sine-regression setup (Finn et al. 2017, section 5.1), which first-order MAML "
        "shares with MAML: an MLP 1-40-40-1, K = 10 support and 100 query points, one inner step at lr 0.01 in "
        "training (the paper's; this recipe overrides the 5-step default), 10 at test time, Adam 1e-3 over "
        "meta-batches of 25 tasks."))

    @property
    def first_order(self) -> bool:
        return True
