"""Screenshot tour: ``workbench tour --out DIR`` opens the real main window, trains a short run of the default
experiment (the default kind's dataset and algorithm) and saves a PNG of each panel and view into DIR (offscreen
when there is no display).

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
    parser.add_argument("--timeout", type=float, default=600.0, help="Give up after this many seconds.")
    return parser


class Tour:
    def __init__(self, app, window, out: Path, timeout: float):
        self.app = app
        self.window = window
        self.out = out
        self.deadline = time.monotonic() + timeout
        self.saved: list[Path] = []
        self.count = 0

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


def _train_regression_demo(tour: Tour, args) -> str | None:
    """Switch to the regression kind, train a short run with its recommended recipe and evaluate it quickly;
    returns the run id (None when the kind is not installed)."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.config import ExperimentConfig
    from workbench.core.recipes import recommended_recipe
    from workbench.core.try_points import REGRESSION_KIND

    window, panel = tour.window, tour.window.dataset_panel
    if not window.set_kind(REGRESSION_KIND):
        return None
    tour.wait_until(lambda: panel.is_ready() and not panel.is_loading, "the regression dataset")
    base = window.current_config()
    recipe = recommended_recipe(get_algorithm(base.algorithm.name), base.kind, base.dataset.name)
    config = ExperimentConfig.from_dict({
        "name": f"tour-{base.algorithm.name}-{base.dataset.name}", "kind": base.kind,
        "dataset": {"name": base.dataset.name},
        "algorithm": {"name": base.algorithm.name, "recipe": recipe.name if recipe else ""},
        "training": {"steps": REGRESSION_STEPS, "val_interval": REGRESSION_STEPS // 5,
                     "val_episodes": args.val_episodes, "checkpoint_interval": REGRESSION_STEPS}})
    window.apply_config(config)
    finished: list[dict] = []
    window.training_finished.connect(lambda job_id, final: finished.append(final))
    if window.start_training(config) is None:
        raise RuntimeError(f"the tour could not start the regression run: {window.run_blocked_reason}")
    tour.wait_until(lambda: bool(finished), "the end of the regression run")
    run_id = finished[-1].get("run_id")
    if window.runs_view is not None and run_id:
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
    _panels_tour(tour)
    finished = _train_demo_runs(tour, args)
    run_ids = _runs_tour(tour, args, finished)
    _views_tour(tour, run_ids)
    _theme_and_dialogs_tour(tour, args)
    _regression_tour(tour, args)

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
