"""Screenshot tour: ``workbench tour --out DIR`` opens the real main window, trains a short run of the default
experiment (the default kind's dataset and algorithm) and saves a PNG of each panel and view into DIR (offscreen
when there is no display).

Later parts find their algorithms in the declarations: a short run of each algorithm with inspection records and
the Mechanism view on each record; a short run of each sample-weighting algorithm and its Sample weights view; and
the accuracy against an attack's budget ε of a run trained against attacks and a gradient-based run trained without,
compared in the Evaluation tab; the Sweep dialog and the Studies tab with a tiny study (four short trials, two at a
time, in processes of their own); a race of a short learned-optimizer run on its "Try a task" page; and the
Evaluation tab of each kind but the default one, on a short run of its default algorithm evaluated on a few test
tasks. ``--parts`` picks the parts to shoot.

It uses its own temporary settings and run store unless ``--home`` is given, so a user's settings and runs
are never touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

# main: the panels, two short runs of the default experiment, the Runs tab, the analysis views, the other theme
# and the dialogs; regression: the Fit view and "Try a task" on points; mechanism: each inspection record;
# weights: the Sample weights view of each weighting algorithm; robustness: accuracy against an attack's budget;
# studies: the Sweep dialog and a tiny study run from it, in the Studies tab; race: "Try a task" of the kinds that
# race a learned optimizer; evaluations: the Evaluation tab of each kind but the default one.
PARTS = ("main", "regression", "mechanism", "weights", "robustness", "studies", "race", "evaluations")
# The screenshots of the later views continue the numbers after the regression ones, whichever parts run.
LATER_FIRST_NUMBER = 21
EPSILONS = (0.0, 0.01, 0.02, 0.05, 0.1)  # attack budgets in pixel units of a 0-1 scale
RACE_SEED = 7  # the seed of the test problem raced on

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench tour", description="Save screenshots of every panel and view "
                                     "while a short training of the default experiment runs.")
    parser.add_argument("--out", required=True, help="Folder for the PNG files (created if missing).")
    parser.add_argument("--steps", type=int, default=150, help="Meta-training steps of the demo run (default 150).")
    parser.add_argument("--val-interval", type=int, default=50, help="Validate every this many steps (default 50).")
    parser.add_argument("--val-episodes", type=int, default=20, help="Validation episodes (default 20).")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--theme", choices=("light", "dark"), default="light",
                        help="Theme of the main screenshots; the other theme gets one screenshot too.")
    parser.add_argument("--home", help="Run store to use (default: a temporary one).")
    parser.add_argument("--short-steps", type=int, default=30,
                        help="Steps of each short run behind the Mechanism, sample-weighting, robustness, race "
                        "and evaluation screenshots, validated three times (default 30).")
    parser.add_argument("--attack-episodes", type=int, default=50,
                        help="Test episodes of the accuracy-against-ε comparison (default 50).")
    parser.add_argument("--eval-episodes", type=int, default=5,
                        help="Test tasks of each kind's evaluation in the evaluations part: episodes, problems, "
                        "networks or seeds, as the kind counts them (default 5).")
    parser.add_argument("--parts", type=_parts, default=PARTS,
                        help=f"Parts of the tour to shoot, comma-separated (default all): {', '.join(PARTS)}.")
    parser.add_argument("--algorithms", type=_names, default=None, metavar="A,B,...",
                        help="Only these algorithms in the mechanism, weights, race and evaluations parts "
                        "(default: every one that feeds them).")
    parser.add_argument("--timeout", type=float, default=1200.0, help="Give up after this many seconds.")
    return parser


def _names(text: str) -> tuple[str, ...]:
    from workbench.core.algorithms import algorithm_names

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in algorithm_names()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown algorithm(s) {', '.join(unknown) or '(none given)'}; known: "
                                         f"{', '.join(algorithm_names())}")
    return names


def _chosen(args, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (kind, algorithm) pairs that --algorithms keeps."""
    wanted = getattr(args, "algorithms", None)
    return [pair for pair in pairs if wanted is None or pair[1] in wanted]


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part {', '.join(unknown) or '(none given)'}; choose from "
                                         f"{', '.join(PARTS)}")
    return parts


class Tour:
    def __init__(self, app, window, out: Path, timeout: float):
        self.app = app
        self.window = window
        self.out = out
        self.deadline = time.monotonic() + timeout
        self.saved: list[Path] = []
        self.count = 0
        self.trained: dict[tuple[str, str], str] = {}  # (kind, algorithm) -> run id of the tour's short runs

    def pump(self, ms: int = 30) -> None:
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        while not predicate():
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"the tour timed out waiting for {what}")
            self.pump()

    def shoot(self, widget, name: str) -> Path:
        self.pump(60)  # let layouts and plots settle
        self.count += 1
        path = self.out / f"{self.count:02d}-{name}.png"
        if not widget.grab().save(str(path)):
            raise OSError(f"could not write {path}")
        self.saved.append(path)
        print(f"saved {path}", flush=True)
        return path


def _fill_try_view(view, folder: Path, dataset) -> None:
    """Three meta-test classes of the loaded dataset (far apart in its class order), two images each, two
    queries and a drawn one."""
    from PIL import Image
    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest

    split = dataset.splits["test"]
    by_class = split.indices_by_class()
    picks = [0, split.num_classes // 3, 2 * split.num_classes // 3]
    folder.mkdir(parents=True, exist_ok=True)

    def image_file(class_id: int, sample: int) -> Path:
        path = folder / f"class-{class_id}-{sample}.png"
        pixels = split.images[int(by_class[class_id][sample])].numpy()
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(path)
        return path

    while len(view.task.class_names()) < len(picks):
        view.add_class()
    for class_name, class_id in zip(view.task.class_names(), picks):
        view.add_files(class_name, [image_file(class_id, sample) for sample in (0, 1)])
    view.add_files(None, [image_file(picks[0], 2), image_file(picks[2], 3)])
    # A drawing, stroke by stroke as a user would, added as a query.
    canvas = view.sketch.canvas
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(40, 60))
    for step in range(0, 150, 10):
        QTest.mouseMove(canvas, QPoint(40 + step, 60 + step // 2))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(190, 135))
    view.add_drawing()


# The regression screenshots come after the numbers of the episodic ones, which are made separately (17, 18).
REGRESSION_FIRST_NUMBER = 19
REGRESSION_STEPS = 1000  # about 15 s on two idle cores: enough for the meta-learned start to look like the tasks


def _planned_steps(recipe) -> int:
    from workbench.core.config import TrainingConfig

    return int((recipe.training if recipe else {}).get("steps") or TrainingConfig().steps)


def _step_counts(fields_cls, given: dict):
    """(spec, value) of each declared integer that counts steps (its name ends in "steps")."""
    from workbench.core.hparams import specs

    for spec in specs(fields_cls):
        if spec.type is int and spec.name.endswith("steps"):
            yield spec, given.get(spec.name, spec.default)


def _shrunk_phases(cls, recipe, steps: int) -> dict:
    """Hyperparameters counting the training steps of a phase (a pre-training, say: a step count at least a quarter
    of the recipe's run, unlike an inner loop's) shrunk in proportion to a short run of ``steps``, so the run still
    reaches the algorithm's own method."""
    planned = _planned_steps(recipe)
    return {spec.name: max(int(spec.low or 0), min(steps - 1, round(value * steps / planned)))
            for spec, value in _step_counts(cls.HParams, dict(recipe.hparams) if recipe else {})
            if planned and 4 * value >= planned >= steps}


def _shrunk_options(kind_cls, recipe, steps: int) -> dict:
    """Kind options counting more steps than the recipe's whole run (networks retrained from scratch by the test
    evaluation, say) shrunk in proportion to a short run of ``steps``, so its evaluation stays short too. Shorter
    ones are kept: they set what the evaluation measures (a test horizon, a judge's training)."""
    planned = _planned_steps(recipe)
    return {spec.name: max(int(spec.low or 1), round(value * steps / planned))
            for spec, value in _step_counts(kind_cls.Options, dict(recipe.task) if recipe else {})
            if value > planned >= steps}


def short_config(kind: str, algorithm: str, steps: int, val_interval: int, val_episodes: int):
    """A short run of an algorithm on the kind's default dataset with its recommended recipe (its long phases and
    long evaluation settings shrunk with it), validated on ``val_episodes`` tasks or the fewer its recipe asks for
    (where each is costly, a network trained from scratch, say)."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.config import ExperimentConfig
    from workbench.core.kinds import get_kind_class
    from workbench.core.recipes import recommended_recipe

    cls, kind_cls = get_algorithm(algorithm), get_kind_class(kind)
    dataset = kind_cls.default_dataset
    recipe = recommended_recipe(cls, kind, dataset)
    recipe_training = dict(recipe.training) if recipe else {}
    return ExperimentConfig.from_dict({
        "name": f"tour-{algorithm}-{dataset}", "kind": kind, "dataset": {"name": dataset},
        "task": _shrunk_options(kind_cls, recipe, steps),
        "algorithm": {"name": algorithm, "recipe": recipe.name if recipe else "",
                      "hparams": _shrunk_phases(cls, recipe, steps)},
        "training": {"steps": steps, "val_interval": val_interval, "checkpoint_interval": steps,
                     "val_episodes": min(val_episodes, recipe_training.get("val_episodes", val_episodes))}})


def _train(tour: Tour, config) -> str:
    """Show ``config`` in the panels, train it to its end and return the run id (the tour's record of it too)."""
    window, panel = tour.window, tour.window.dataset_panel
    what = f"the {config.algorithm.name} run"
    window.apply_config(config)
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, f"the dataset of {what}")
    finished: list[dict] = []

    def collect(job_id: int, final: dict) -> None:
        finished.append(final)

    window.training_finished.connect(collect)
    try:
        if window.start_training(config) is None:
            raise RuntimeError(f"the tour could not start {what}: {window.run_blocked_reason}")
        tour.wait_until(lambda: bool(finished), f"the end of {what}")
    finally:
        window.training_finished.disconnect(collect)
    final = finished[-1]
    if final.get("event") in ("failed", "cancelled") or not final.get("run_id"):
        raise RuntimeError(f"{what} of the tour ended '{final.get('event')}': {final.get('message')}")
    tour.trained[(config.kind, config.algorithm.name)] = final["run_id"]
    return final["run_id"]


def _train_regression_demo(tour: Tour, args) -> str | None:
    """Switch to the regression kind, train a short run with its recommended recipe and evaluate it quickly;
    returns the run id (None when the kind is not installed)."""
    from workbench.core.try_points import REGRESSION_KIND

    window, panel = tour.window, tour.window.dataset_panel
    if not window.set_kind(REGRESSION_KIND):
        return None
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, "the regression dataset")
    base = window.current_config()
    run_id = _train(tour, short_config(base.kind, base.algorithm.name, REGRESSION_STEPS, REGRESSION_STEPS // 5,
                                       args.val_episodes))
    if window.runs_view is not None:
        evaluated: list = []
        window.runs_view.evaluation_finished.connect(lambda *result: evaluated.append(result))
        window.runs_view.evaluate(run_id, episodes=args.val_episodes * 4)
        tour.wait_until(lambda: bool(evaluated), "the evaluation of the regression run")
        window.run_store_changed.emit()
    return run_id


def _regression_tour(tour: Tour, args) -> None:
    """A short regression run, then the Fit view and the regression "Try a task" page with a few clicked points."""
    from PySide6.QtCore import QPointF, Qt
    from PySide6.QtTest import QTest

    window = tour.window
    run_id = _train_regression_demo(tour, args)
    if run_id is None:
        return  # no regression kind installed: nothing to show
    tour.count = max(tour.count, REGRESSION_FIRST_NUMBER - 1)
    fit = window.view("fit")
    window.show_view(fit.view_title)
    fit.show_run(run_id)
    tour.shoot(window, "fit")

    page = window.view("try_points")
    window.show_view(page.view_title)
    page.select_model(run_id)
    box = page.canvas.getPlotItem().getViewBox()
    for x, y in ((-4.2, 1.9), (-2.6, 1.5), (-1.0, -2.0), (1.2, 0.0), (3.4, 2.0)):  # clicks on 2.5 sin(x - 1.2)
        tour.pump()
        spot = page.canvas.mapFromScene(box.mapViewToScene(QPointF(x, y)))
        QTest.mouseClick(page.canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, spot)
    tour.wait_until(lambda: page.fit is not None and not page.busy, "the adaptation to the clicked points")
    tour.shoot(window, "try-regression")


def _kinds_default_first() -> list[str]:
    from workbench.core.kinds import DEFAULT_KIND, kind_names

    return [DEFAULT_KIND] + [name for name in kind_names() if name != DEFAULT_KIND]


def _use_kind(tour: Tour, kind: str) -> None:
    """The window set up for ``kind`` (its tabs show that kind's pages), its dataset loaded."""
    panel = tour.window.dataset_panel
    tour.window.set_kind(kind)
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, f"the dataset of the {kind} kind")


def _short(tour: Tour, args, kind: str, algorithm: str) -> str:
    """The run id of the tour's short run of ``algorithm`` on ``kind``, trained now unless the tour has one."""
    known = tour.trained.get((kind, algorithm))
    if known is not None:
        return known
    steps = max(2, args.short_steps)
    return _train(tour, short_config(kind, algorithm, steps, max(1, steps // 3), args.val_episodes))


def feeders_by_kind(capability: str) -> list[tuple[str, str]]:
    """(kind, algorithm) for each algorithm declaring ``capability``, at the first kind (the default kind first)
    that lists the view and that the algorithm supports."""
    from workbench.core.algorithms import algorithm_names, get_algorithm
    from workbench.core.kinds import get_kind_class

    pairs, seen = [], set()
    for kind in _kinds_default_first():
        if capability not in get_kind_class(kind).views:
            continue
        for name in algorithm_names():
            cls = get_algorithm(name)
            if name not in seen and cls.has(capability) and cls.supports(kind):
                pairs.append((kind, name))
                seen.add(name)
    return pairs


def _mechanism_tour(tour: Tour, args) -> None:
    """A short run of each algorithm with inspection records, and the Mechanism view on each record at the run's
    last validation."""
    window = tour.window
    runs = [(kind, algorithm, _short(tour, args, kind, algorithm))
            for kind, algorithm in _chosen(args, feeders_by_kind("inspection"))]
    for kind, algorithm, run_id in runs:  # trained first: the view then draws each run while it is shown
        _use_kind(tour, kind)
        window.show_view("Mechanism")
        view = window.view("Mechanism")
        view.show_run(run_id)
        tour.wait_until(lambda: not view.showing_explanation, f"the inspection records of {algorithm}")
        for spec in view.history.specs:
            view.select_record(spec.name)
            tour.shoot(window, f"mechanism-{algorithm}-{spec.name.replace('_', '-')}")


def weighting_feeders() -> list[tuple[str, str]]:
    """(kind, algorithm) for the algorithms weighting samples on the first kind (the default kind first) whose
    default algorithm weights them, that default first: the weightings to compare."""
    from workbench.core.algorithms import algorithm_names, get_algorithm
    from workbench.core.kinds import get_kind_class

    for kind in _kinds_default_first():
        cls = get_kind_class(kind)
        if "sample_weights" in cls.views and get_algorithm(cls.default_algorithm).has("sample_weights"):
            others = [name for name in algorithm_names() if name != cls.default_algorithm and
                      get_algorithm(name).has("sample_weights") and get_algorithm(name).supports(kind)]
            return [(kind, name) for name in [cls.default_algorithm] + others]
    return []


def _weights_tour(tour: Tour, args) -> None:
    """A short run of each sample-weighting algorithm on the same kind, and the Sample weights view on each."""
    window = tour.window
    for kind, algorithm in _chosen(args, weighting_feeders()):
        run_id = _short(tour, args, kind, algorithm)
        _use_kind(tour, kind)
        window.show_view("Sample weights")
        view = window.view("Sample weights")
        view.show_run(run_id)
        tour.wait_until(lambda: not view.showing_explanation, f"the sample weights of {algorithm}")
        tour.shoot(window, f"weights-{algorithm}")


def _evaluated(store, run_id: str, episodes: int):
    """A test evaluation of the run on ``episodes`` fixed episodes (not saved yet)."""
    from workbench.core.evaluation import evaluate_run

    return evaluate_run(run_id, store, episodes=episodes, save=False)


def _with_attack_curve(store, run_id: str, result) -> bool:
    """Add accuracy against ε on the evaluation's own episodes to ``result`` and save it with the run, as
    ``workbench eval --adversarial`` does; False when the algorithm cannot be attacked."""
    from workbench.core.adversarial import AttackUnsupported
    from workbench.core.evaluation import attack_curve

    run = store.get(run_id)
    try:
        curve = attack_curve(run, result, EPSILONS)
    except AttackUnsupported:
        return False
    result.extras.update(curve.extras())
    run.save_evaluation(result)
    return True


def _attack_candidates(kind: str) -> tuple[list[str], list[str]]:
    """Gradient-based algorithms of ``kind``: those whose evaluations add numbers of their own (one trained against
    attacks carries its accuracy against ε there), and the others. Sample weighting's numbers are its own view's."""
    from workbench.core.algorithms import algorithm_names, get_algorithm

    classes = [get_algorithm(name) for name in algorithm_names()]
    gradient = [cls for cls in classes if cls.gradient_based and cls.supports(kind) and not cls.has("sample_weights")]
    return ([cls.name for cls in gradient if cls.has("evaluation_extras")],
            [cls.name for cls in gradient if not cls.has("evaluation_extras")])


def _robust_run(tour: Tour, args, kind: str, candidates: list[str]) -> tuple[str, object] | None:
    """(run id, evaluation) of the first candidate whose own evaluation carries a curve, trained if needed."""
    from workbench.gui.evaluation.results import ResultData

    for algorithm in candidates:
        run_id = _short(tour, args, kind, algorithm)
        result = _evaluated(tour.window.store, run_id, args.attack_episodes)
        if ResultData.of(result).curves():
            return run_id, result
    return None


def _plain_run(tour: Tour, args, kind: str, plain: list[str], robust_id: str) -> str | None:
    """A gradient-based run of the tour trained without attacks (the first one, else the first such algorithm),
    evaluated on the same episodes with its accuracy against ε saved."""
    store = tour.window.store
    trained = [algorithm for (of_kind, algorithm) in tour.trained if of_kind == kind]
    for algorithm in [name for name in trained if name in plain] + [name for name in plain if name not in trained]:
        run_id = _short(tour, args, kind, algorithm)
        if run_id != robust_id and _with_attack_curve(store, run_id, _evaluated(store, run_id, args.attack_episodes)):
            return run_id
    return None


def _robustness_tour(tour: Tour, args) -> None:
    """Accuracy against an attack's budget ε of a run trained against attacks and of a gradient-based run trained
    without, on the same test episodes, drawn together in the Evaluation tab's comparison."""
    from workbench.core.device import configure_cpu_threads
    from workbench.core.kinds import DEFAULT_KIND

    window = tour.window
    configure_cpu_threads(0, reserve_for_gui=True)  # evaluated here, beside the GUI, as its trainings are
    with_extras, plain = _attack_candidates(DEFAULT_KIND)
    robust = _robust_run(tour, args, DEFAULT_KIND, with_extras)
    if robust is None:
        print("no installed algorithm reports its accuracy against an attack: no robustness screenshot", flush=True)
        return
    robust_id, result = robust
    plain_id = _plain_run(tour, args, DEFAULT_KIND, plain, robust_id)
    if plain_id is None or not _with_attack_curve(window.store, robust_id, result):
        print("no second attackable run to compare with: no robustness screenshot", flush=True)
        return
    _use_kind(tour, DEFAULT_KIND)
    window.run_store_changed.emit()
    window.show_view("Evaluation")
    view = window.view("Evaluation")
    view.refresh_runs()
    view.select_run(robust_id)
    view.set_checked([plain_id, robust_id])
    view.episodes_spin.setValue(args.attack_episodes)
    compared: list = []
    view.comparison_finished.connect(lambda rows: compared.append(rows))
    view.compare_checked()  # takes the saved evaluations: the same episodes, with their curves
    tour.wait_until(lambda: bool(compared) and not view.is_busy, "the comparison of the runs' robustness")
    view.tabs.setCurrentWidget(view.compare_panel)
    tour.shoot(window, "accuracy-against-eps")


def _studies_tour(tour: Tour, args) -> None:
    """The Sweep dialog on a short run of the default experiment (a grid over the shots and the learning rate),
    the study run from it (two trials at a time) and the Studies tab once it has ended."""
    from workbench.core.kinds import DEFAULT_KIND, get_kind_class

    window = tour.window
    steps = max(2, args.short_steps)
    config = short_config(DEFAULT_KIND, get_kind_class(DEFAULT_KIND).default_algorithm, steps, max(1, steps // 3),
                          args.val_episodes)
    _use_kind(tour, DEFAULT_KIND)
    window.apply_config(config)
    window.open_sweep_dialog()
    dialog = window._last_dialog
    lr = window.current_config().training.lr
    dialog.row("dataset.shots").set_values([1, 5])
    dialog.row("training.lr").set_values([lr, 3 * lr])
    dialog.settings_form.set_values({"sampler": "grid", "trials": 4, "workers": 2, "prune_after_trials": 1})
    tour.wait_until(dialog.is_valid, "a valid study in the Sweep dialog")
    tour.shoot(dialog, "sweep-dialog")
    view = window.studies_view
    dialog.accept()
    tour.wait_until(lambda: view.live is not None and any(t.state == "running" for t in view.live.trials),
                    "the study's first trials")
    tour.wait_until(lambda: not view.is_running, "the end of the study")
    tour.wait_until(lambda: not view.is_reading, "the study as stored")
    if view.last_error:
        raise RuntimeError(f"the tour's study failed: {view.last_error[1]}")
    window.show_view("Studies")
    tour.shoot(window, "studies")
    view.plot_tabs.setCurrentWidget(view.slice_plot)
    tour.shoot(view, "studies-slice")
    view.plot_tabs.setCurrentWidget(view.parallel_plot)


def race_feeders() -> list[tuple[str, str]]:
    """(kind, its default algorithm) for each kind whose "Try a task" page is the race view."""
    from workbench.core.kinds import get_kind_class
    from workbench.gui.try_race_view import CAPABILITY
    from workbench.gui.view_registry import shows

    return [(kind, get_kind_class(kind).default_algorithm) for kind in _kinds_default_first()
            if shows(get_kind_class(kind), CAPABILITY)]


def _race_tour(tour: Tour, args) -> None:
    """A short run of each racing kind, raced on its "Try a task" page against the hand-made optimizers on the
    problem it trained on (a test problem of a fixed seed), shot once the race has ended."""
    from workbench.gui.try_race_view import CAPABILITY

    window = tour.window
    for kind, algorithm in _chosen(args, race_feeders()):
        run_id = _short(tour, args, kind, algorithm)
        _use_kind(tour, kind)
        page = window.view(CAPABILITY)
        window.show_view(page.view_title)
        page.refresh_models()
        page.select_model(run_id)
        page.seed_box.setValue(RACE_SEED)
        ended: list = []
        record = ended.append
        page.race_finished.connect(record)
        try:
            page.start_race()
            tour.wait_until(lambda: bool(ended), f"the race of {algorithm}")
        finally:
            page.race_finished.disconnect(record)
        if ended[-1] is None:
            raise RuntimeError(f"the race of {algorithm} in the tour did not finish: {page.status.text()}")
        tour.shoot(window, f"try-race-{algorithm}")


def evaluation_feeders() -> list[tuple[str, str]]:
    """(kind, its default algorithm) for each kind with an Evaluation view but the default kind, whose evaluation
    the main part shoots."""
    from workbench.core.kinds import DEFAULT_KIND, get_kind_class

    return [(kind, get_kind_class(kind).default_algorithm) for kind in _kinds_default_first()
            if kind != DEFAULT_KIND and "evaluation" in get_kind_class(kind).views]


def _evaluate_from_runs_tab(tour: Tour, run_id: str, episodes: int) -> None:
    """Evaluate a run as the Runs tab's Evaluate does (the window's evaluation service, in the background; the
    result is saved with the run) on ``episodes`` test tasks."""
    runs_view = tour.window.runs_view
    outcome: list = []

    def finished(evaluated_id: str, result) -> None:
        if evaluated_id == run_id:
            outcome.append(None)

    def failed(job_id: int, message: str, details: str) -> None:
        outcome.append(message)

    runs_view.evaluation_finished.connect(finished)
    runs_view.service.failed.connect(failed)
    try:
        runs_view.refresh()
        runs_view.evaluate(run_id, episodes=episodes)
        if not runs_view.service.is_running:
            raise RuntimeError(f"the tour could not evaluate the run {run_id} from the Runs tab")
        tour.wait_until(lambda: bool(outcome), f"the evaluation of the run {run_id}")
    finally:
        runs_view.evaluation_finished.disconnect(finished)
        runs_view.service.failed.disconnect(failed)
    if outcome[-1] is not None:
        raise RuntimeError(f"the evaluation of the run {run_id} in the tour failed: {outcome[-1]}")


def _evaluations_tour(tour: Tour, args) -> None:
    """A short run of each other kind's default algorithm, evaluated on a few test tasks, and each page of the
    Evaluation tab that its result fills (its comparison with the kind's baselines, a curve)."""
    window = tour.window
    if window.runs_view is None:
        print("no Runs tab to evaluate from: no evaluation screenshots", flush=True)
        return
    for kind, algorithm in _chosen(args, evaluation_feeders()):
        run_id = _short(tour, args, kind, algorithm)
        _evaluate_from_runs_tab(tour, run_id, args.eval_episodes)
        _use_kind(tour, kind)
        window.show_view("Evaluation")
        view = window.view("Evaluation")
        view.refresh_runs()
        view.select_run(run_id)  # shows the run's newest saved result
        view.episodes_spin.setValue(args.eval_episodes)  # the form says what was evaluated
        tour.wait_until(lambda: view.result is not None and view.result_panel.run_id == run_id,
                        f"the evaluation of {algorithm} in the Evaluation tab")
        for page in view.result_panel.accepted():
            view.tabs.setCurrentWidget(page)
            tour.shoot(window, f"evaluation-{kind}-{page.title.lower().replace(' ', '-')}")


def _open_window(args):
    """The main window on its own settings (and the ``--home`` run store when given), shown at the asked size."""
    from workbench.core.runs import RunStore
    from workbench.gui.main_window import MainWindow
    from workbench.gui.settings import Settings

    window = MainWindow(store=RunStore(args.home) if args.home else None, settings=Settings(), restore=False)
    window.confirm_stop_on_close = lambda: True
    window.set_theme(args.theme)
    window.resize(args.width, args.height)
    window.show()
    return window


def _panels_tour(tour: Tour) -> None:
    """The main window, the dataset and algorithm panels, and an impossible episode setting."""
    window = tour.window
    panel = window.dataset_panel
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, "the dataset")
    tour.wait_until(lambda: window.run_blocked_reason is None, "a runnable experiment")

    window.show_view("Training")
    tour.shoot(window, "main")
    window.dataset_dock.raise_()
    tour.shoot(window.dataset_dock, "dataset-panel")
    window.algorithm_dock.raise_()
    tour.shoot(window.algorithm_dock, "algorithm-panel")

    # An impossible episode setting: Run is disabled and the panel says what to change.
    window.dataset_dock.raise_()
    panel.episode_form.set_value("shots", 25)
    tour.wait_until(lambda: window.run_blocked_reason is not None, "the episode check")
    tour.shoot(window, "impossible-setting")
    panel.episode_form.set_value("shots", 1)
    tour.wait_until(lambda: window.run_blocked_reason is None, "the episode check")


def _train_demo_runs(tour: Tour, args) -> list[dict]:
    """Two short runs of the default experiment, the second with a higher learning rate; returns the list that
    collects the final records of finished trainings."""
    window = tour.window
    training = window.algorithm_panel.training_form
    training.set_values({"steps": args.steps, "val_interval": args.val_interval,
                         "val_episodes": args.val_episodes})
    demo = window.current_config()  # the kind's default dataset and algorithm
    window.algorithm_panel.name_edit.setText(f"tour-{demo.algorithm.name}-{demo.dataset.name}")
    tour.pump()
    finished: list[dict] = []
    window.training_finished.connect(lambda job_id, final: finished.append(final))
    if window.start_training() is None:
        raise RuntimeError(f"the tour could not start training: {window.run_blocked_reason}")
    view = window.training_view
    tour.wait_until(lambda: len(view.loss) >= args.steps // 2 or finished, "training progress")
    tour.shoot(window, "training-live")
    tour.wait_until(lambda: bool(finished), "the end of training")
    tour.shoot(view, "training-view")

    # A second run with a higher learning rate, to compare in the Runs tab and as overlays.
    training.set_value("lr", 3e-3)
    window.algorithm_panel.name_edit.setText(f"tour-{demo.algorithm.name}-lr3e-3")
    tour.wait_until(lambda: window.run_blocked_reason is None, "a runnable experiment")
    if window.start_training() is None:
        raise RuntimeError(f"the tour could not start the second run: {window.run_blocked_reason}")
    tour.wait_until(lambda: len(finished) >= 2, "the end of the second run")
    return finished


def _runs_tour(tour: Tour, args, finished: list[dict]) -> list[str]:
    """The Runs tab, the runs overlaid in the Training view and an evaluation of the last one; returns the run
    ids (none without a Runs view)."""
    window, view = tour.window, tour.window.training_view
    run_ids: list[str] = []
    if window.runs_view is not None:
        window.show_view("Runs")
        window.runs_view.refresh()
        tour.shoot(window, "runs-view")
        run_ids = [final.get("run_id") for final in finished if final.get("run_id")]
        if run_ids:
            window.overlay_runs(run_ids, run_ids[0])
            tour.shoot(view, "runs-compared")
            view.clear_overlays()

        if run_ids:
            evaluated: list = []
            window.runs_view.evaluation_finished.connect(lambda *result: evaluated.append(result))
            window.runs_view.evaluate(run_ids[-1], episodes=args.val_episodes * 4)
            tour.wait_until(lambda: bool(evaluated), "the evaluation of the last run")
            window.run_store_changed.emit()
    return run_ids


def _views_tour(tour: Tour, run_ids: list[str]) -> None:
    """The analysis views, each once its background work (evaluation, trace, projection, adaptation) is done."""
    window = tour.window
    for name in ("Evaluation", "Adaptation", "Embeddings", "Sample weights", "Try a task"):
        widget = window.view(name)
        if widget is None:
            continue
        window.show_view(name)
        if run_ids and hasattr(widget, "select_run"):
            widget.select_run(run_ids[-1])  # the evaluated run
        for action in ("show_saved", "load_selected"):  # a saved evaluation; the embedding history
            if hasattr(widget, action):
                getattr(widget, action)()
        if name == "Try a task":
            _fill_try_view(widget, tour.out / ".try-images", window.dataset())
        tour.pump(300)
        tasks = [t for t in vars(widget).values() if hasattr(t, "is_running") and hasattr(t, "cancel")]
        tour.wait_until(lambda: not any(t.is_running for t in tasks), f"the {name} view")
        tour.pump(300)
        tour.shoot(window, name.lower().replace(" ", "-"))


def _theme_and_dialogs_tour(tour: Tour, args) -> None:
    """The main window in the other theme, then the shortcuts and About dialogs."""
    window = tour.window
    other = "dark" if args.theme == "light" else "light"
    window.set_theme(other)
    window.show_view("Training")
    tour.shoot(window, f"main-{other}")
    window.set_theme(args.theme)

    window.show_shortcuts()
    tour.shoot(window._last_dialog, "shortcuts")
    window._last_dialog.close()
    window.show_about()
    tour.shoot(window._last_dialog, "about")
    window._last_dialog.close()


def run_tour(args) -> list[Path]:
    from workbench.gui.app import create_application

    app = create_application([])
    from workbench.gui import dialogs

    dialogs.BLOCKING_DIALOGS = False
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    tour = Tour(app, _open_window(args), out, args.timeout)
    parts = set(args.parts)
    panel = tour.window.dataset_panel
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, "the dataset")
    if "main" in parts:
        _panels_tour(tour)
        finished = _train_demo_runs(tour, args)
        run_ids = _runs_tour(tour, args, finished)
        _views_tour(tour, run_ids)
        _theme_and_dialogs_tour(tour, args)
    if "regression" in parts:
        _regression_tour(tour, args)
    tour.count = max(tour.count, LATER_FIRST_NUMBER - 1)
    for part, shoot in (("mechanism", _mechanism_tour), ("weights", _weights_tour),
                        ("robustness", _robustness_tour), ("studies", _studies_tour), ("race", _race_tour),
                        ("evaluations", _evaluations_tour)):
        if part in parts:
            shoot(tour, args)

    tour.window.close()
    tour.pump()
    return tour.saved


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from workbench.gui.app import ensure_display
    from workbench.gui.settings import SETTINGS_DIR_ENV

    ensure_display()
    with tempfile.TemporaryDirectory(prefix="workbench-tour-") as scratch:
        os.environ[SETTINGS_DIR_ENV] = str(Path(scratch) / "settings")
        if not args.home:
            args.home = str(Path(scratch) / "home")
        saved = run_tour(args)
    print(f"{len(saved)} screenshots in {Path(args.out).expanduser()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
