"""The "Evaluation" tab: test a saved run on fixed episodes (off the GUI thread), read its accuracy ± 95% CI,
per-class accuracy and confusion matrix, open the misclassified queries of a confusion cell with their support
images, compare runs on identical episodes with a paired test, and plot accuracy against shots.

Everything is read from the run folders, so the tab works on runs saved before a restart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QFormLayout, QGridLayout, QHBoxLayout, QHeaderView,
                               QLabel, QListWidget, QListWidgetItem, QProgressBar, QPushButton, QScrollArea,
                               QSpinBox, QSplitter, QTableWidget, QTableWidgetItem, QTabWidget, QVBoxLayout,
                               QWidget)

from workbench.gui import theme as themes
from workbench.gui.background import BackgroundTask

# The confusion matrix shows at most this many classes: those involved in the most errors.
CONFUSION_MAX_CLASSES = 20
# A clicked cell shows at most this many queries (each with its support images).
EXAMPLES_MAX = 12
SHOT_SWEEP = (1, 5, 10)
THUMB_SIZE = 56
SIGNIFICANCE = 0.05


# --- headless helpers (no widgets) ------------------------------------------------------------------
def paired_test(candidate, baseline) -> tuple[float, float]:
    """Mean per-episode difference (candidate - baseline) and the two-sided p-value of a paired t-test.

    Uses scipy when installed, else a normal approximation of the t statistic (fine for the usual ≥ 100
    episodes). Identical accuracies give p = 1.
    """
    a = np.asarray(candidate, np.float64)
    b = np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("a paired test needs the same episodes (at least 2) for both runs")
    diff = a - b
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1))
    if sd == 0.0:
        return mean, 1.0 if mean == 0.0 else 0.0
    try:
        from scipy import stats

        p_value = float(stats.ttest_rel(a, b).pvalue)
    except ImportError:
        t = mean / (sd / math.sqrt(diff.size))
        p_value = float(math.erfc(abs(t) / math.sqrt(2.0)))
    return mean, p_value


def verdict(mean_diff: float, p_value: float, alpha: float = SIGNIFICANCE) -> str:
    """'better' / 'worse' when significant at ``alpha``, else 'same' (as in Weka's Experimenter)."""
    if p_value < alpha and mean_diff != 0.0:
        return "better" if mean_diff > 0 else "worse"
    return "same"


def most_confused(confusion: np.ndarray, limit: int = CONFUSION_MAX_CLASSES) -> np.ndarray:
    """Indexes of the classes involved in the most errors (as true or predicted class), at most ``limit``,
    in their original order."""
    confusion = np.asarray(confusion)
    n = confusion.shape[0]
    if n <= limit:
        return np.arange(n)
    errors = confusion.sum(0) + confusion.sum(1) - 2 * np.diag(confusion)
    top = np.argsort(-errors, kind="stable")[:limit]
    return np.sort(top)


def matching_evaluation(run, ways: int, shots: int, episodes: int, seed: int, checkpoint: str = "best"):
    """A saved evaluation of ``run`` at exactly this setting (same episodes), or None."""
    for saved in reversed(run.evaluations()):
        if (saved.get("ways"), saved.get("shots"), saved.get("episodes"), saved.get("seed")) != \
                (ways, shots, episodes, seed) or saved.get("split", "test") != "test":
            continue
        if (saved.get("checkpoint") == "last") != (checkpoint == "last" and run.has_checkpoint("best")):
            continue
        result = run.load_evaluation(saved["file"])
        if len(result.per_episode_accuracy) == episodes:
            return result
    return None


def _scaled(progress, index: int, count: int):
    """A progress callback for job ``index`` of ``count`` that reports over the whole."""
    def report(done: int, total: int, message: str = "") -> None:
        fraction = (index + (done / total if total else 0.0)) / count
        progress(int(1000 * fraction), 1000, message)
    return report


def evaluate_runs(progress, store, jobs: list[dict[str, Any]], reuse: bool = True,
                  skip_impossible: bool = False) -> list:
    """Evaluate each job {"run": id, "ways", "shots", "episodes", "seed", "checkpoint"}; a saved evaluation
    at the same setting is reused. With ``skip_impossible`` a setting the test split cannot provide (too few
    images per class for that many shots) is left out instead of failing. Runs in a worker thread."""
    from workbench.core.errors import ConfigError, EpisodeError
    from workbench.core.evaluation import evaluate_run

    results = []
    for index, job in enumerate(jobs):
        run = store.get(job["run"])
        found = matching_evaluation(run, job["ways"], job["shots"], job["episodes"], job["seed"],
                                    job.get("checkpoint", "best")) if reuse else None
        if found is None:
            try:
                found = evaluate_run(run, store, episodes=job["episodes"], ways=job["ways"], shots=job["shots"],
                                     seed=job["seed"], checkpoint=job.get("checkpoint", "best"),
                                     progress=_scaled(progress, index, len(jobs)))
            except (EpisodeError, ConfigError):
                if not skip_impossible:
                    raise
                continue
        results.append(found)
        progress(index + 1, len(jobs), f"evaluated {index + 1}/{len(jobs)}")
    return results


def gather_examples(progress, run, result, true_name: str, pred_name: str, dataset=None,
                    limit: int = EXAMPLES_MAX) -> dict[str, Any]:
    """The queries of ``result`` with this true and predicted class, each with its episode's support images of
    both classes (uint8 CHW arrays). Rebuilds the fixed episodes; runs in a worker thread."""
    from workbench.core import data

    config = run.config
    if dataset is None:
        dataset = data.load_dataset(config.dataset, progress)
    split = dataset.split("test")
    names = list(split.class_names)
    if true_name not in names or pred_name not in names:
        raise ValueError(f"class '{true_name}' or '{pred_name}' is not in the test split of {dataset.name}")
    true_id, pred_id = names.index(true_name), names.index(pred_name)
    records = result.query_records
    chosen = np.flatnonzero((records["true"] == true_id) & (records["pred"] == pred_id))
    total = len(chosen)
    chosen = chosen[:limit]
    fixed = data.FixedEpisodes(split, dataset.spec, result.ways, result.shots, result.queries, result.episodes,
                               result.seed, split_name="test", dataset_name=dataset.name)
    labels = split.labels.cpu().numpy() if hasattr(split.labels, "cpu") else np.asarray(split.labels)
    examples = []
    for n, i in enumerate(chosen):
        episode_index = int(records["episode"][i])
        episode = fixed[episode_index]
        support_rows = np.asarray(episode.support_index.cpu() if hasattr(episode.support_index, "cpu")
                                  else episode.support_index)
        row = int(records["row"][i])
        query_image = split.images[row].cpu().numpy() if row >= 0 else None
        examples.append({
            "episode": episode_index, "query": int(records["query"][i]), "row": row,
            "true": true_name, "pred": pred_name,
            "confidence": float(records["confidence"][i]) if "confidence" in records else float("nan"),
            "query_image": query_image,
            "true_support": [split.images[int(r)].cpu().numpy() for r in support_rows if labels[r] == true_id],
            "pred_support": [split.images[int(r)].cpu().numpy() for r in support_rows if labels[r] == pred_id],
        })
        progress(n + 1, len(chosen), "gathering images")
    return {"true": true_name, "pred": pred_name, "total": total, "examples": examples, "dataset": dataset}


# --- small widget helpers ---------------------------------------------------------------------------
def image_pixmap(image: np.ndarray, size: int = THUMB_SIZE) -> QPixmap:
    """A uint8 CHW (or HW) image as a pixmap scaled to ``size``."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    array = np.ascontiguousarray(array.astype(np.uint8))
    h, w = array.shape[:2]
    if array.ndim == 2:
        qimage = QImage(array.data, w, h, w, QImage.Format.Format_Grayscale8).copy()
    else:
        qimage = QImage(array.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)


def _thumb(image: np.ndarray, colour: str, tip: str) -> QLabel:
    label = QLabel()
    label.setPixmap(image_pixmap(image))
    label.setStyleSheet(f"border: 2px solid {colour}; padding: 1px;")
    label.setToolTip(tip)
    return label


def _heat(value: float, dark: bool) -> QColor:
    """White/dark grey to blue for 0..1."""
    value = min(max(value, 0.0), 1.0)
    base = (30, 31, 34) if dark else (255, 255, 255)
    target = (31, 111, 209)
    return QColor(*[int(b + (t - b) * value) for b, t in zip(base, target)])


def _item(text: str, tip: str = "", align_right: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    if tip:
        item.setToolTip(tip)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


class EvaluationView(QWidget):
    """Evaluate runs, inspect one result, compare several."""

    evaluation_finished = Signal(object)  # EvalResult (also after comparisons: the last one)
    examples_shown = Signal(object)  # the dict from gather_examples
    comparison_finished = Signal(object)  # list of row dicts

    def __init__(self, store=None, theme: themes.Theme | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        from workbench.core.runs import RunStore

        self.store = store if store is not None else RunStore()
        self.theme = theme or themes.LIGHT
        self.result = None  # the EvalResult shown
        self.result_run_id: str | None = None
        self.comparison: list[dict[str, Any]] = []
        self.examples: dict[str, Any] | None = None
        self._confusion_indexes = np.zeros(0, np.int64)
        self._datasets: dict[str, Any] = {}  # dataset name + settings -> loaded dataset, for example images
        self._pending = ""  # what the running task computes: "evaluate" | "sweep" | "compare"
        self.sweep_shots = SHOT_SWEEP
        self._settings_run: str | None = None

        self.task = BackgroundTask(self, progress=self._on_progress, finished=self._on_task_finished,
                                   failed=self._on_task_failed,
                                   cancelled=lambda: self._set_busy(False, "cancelled"))
        self.examples_task = BackgroundTask(self, finished=self._on_examples,
                                            failed=lambda message, _details: self.examples_title.setText(message))
        self._build()
        self.refresh_runs()

    # --- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(QLabel("Runs (tick several to compare):"))
        self.run_list = QListWidget()
        self.run_list.setMinimumHeight(80)
        self.run_list.currentItemChanged.connect(self._on_run_selected)
        left_layout.addWidget(self.run_list, 1)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_runs)
        left_layout.addWidget(self.refresh_button)

        form = QFormLayout()
        self.ways_spin = QSpinBox(minimum=2, maximum=100, value=5)
        self.shots_spin = QSpinBox(minimum=1, maximum=100, value=1)
        self.episodes_spin = QSpinBox(minimum=2, maximum=10_000, value=600)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.addItems(["best", "last"])
        form.addRow("Ways", self.ways_spin)
        form.addRow("Shots", self.shots_spin)
        form.addRow("Test episodes", self.episodes_spin)
        form.addRow("Episode seed", self.seed_spin)
        form.addRow("Checkpoint", self.checkpoint_combo)
        left_layout.addLayout(form)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Run the fixed test episodes for the selected run")
        self.evaluate_button.clicked.connect(self.evaluate_selected)
        self.sweep_button = QPushButton("Evaluate at 1, 5, 10 shots")
        self.sweep_button.clicked.connect(self.evaluate_shot_sweep)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.task.cancel)
        for button in (self.evaluate_button, self.sweep_button, self.cancel_button):
            left_layout.addWidget(button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        left_layout.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        left_layout.addWidget(self.status_label)
        left_layout.addWidget(QLabel("Saved results of this run:"))
        self.saved_combo = QComboBox()
        self.saved_combo.activated.connect(self._on_saved_chosen)
        left_layout.addWidget(self.saved_combo)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        self.summary_label = QLabel("Pick a run and press Evaluate, or choose a saved result.")
        self.summary_label.setWordWrap(True)
        font = self.summary_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        self.summary_label.setFont(font)
        right_layout.addWidget(self.summary_label)
        self.tabs = QTabWidget()
        right_layout.addWidget(self.tabs, 1)

        # Confusion matrix + the images of a clicked cell.
        confusion_page = QSplitter(Qt.Orientation.Vertical)
        self.confusion_table = QTableWidget()
        self.confusion_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.confusion_table.cellClicked.connect(self.open_cell)
        self.confusion_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.confusion_table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.confusion_note = QLabel("")
        confusion_top = QWidget()
        top_layout = QVBoxLayout(confusion_top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.confusion_note)
        top_layout.addWidget(self.confusion_table, 1)
        confusion_page.addWidget(confusion_top)
        examples_box = QWidget()
        examples_layout = QVBoxLayout(examples_box)
        examples_layout.setContentsMargins(0, 0, 0, 0)
        self.examples_title = QLabel("Click a cell (row: true class, column: predicted class) to see its queries.")
        self.examples_title.setWordWrap(True)
        examples_layout.addWidget(self.examples_title)
        self.examples_area = QScrollArea()
        self.examples_area.setWidgetResizable(True)
        self.examples_widget = QWidget()
        self.examples_grid = QGridLayout(self.examples_widget)
        self.examples_area.setWidget(self.examples_widget)
        examples_layout.addWidget(self.examples_area, 1)
        confusion_page.addWidget(examples_box)
        confusion_page.setSizes([420, 300])
        self.tabs.addTab(confusion_page, "Confusion")

        self.per_class_table = QTableWidget(0, 3)
        self.per_class_table.setHorizontalHeaderLabels(["Class", "Accuracy (%)", "Queries"])
        self.per_class_table.verticalHeader().setVisible(False)
        self.per_class_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.per_class_table.setSortingEnabled(True)
        self.tabs.addTab(self.per_class_table, "Per class")

        compare_page = QWidget()
        compare_layout = QVBoxLayout(compare_page)
        row = QHBoxLayout()
        row.addWidget(QLabel("Baseline:"))
        self.baseline_combo = QComboBox()
        self.baseline_combo.setMinimumContentsLength(24)
        row.addWidget(self.baseline_combo, 1)
        self.baseline_combo.currentIndexChanged.connect(self._retest)
        self.compare_button = QPushButton("Compare ticked runs")
        self.compare_button.setToolTip("Evaluate every ticked run on the same test episodes (settings on the left)"
                                       " and test each against the baseline with a paired t-test")
        self.compare_button.clicked.connect(self.compare_checked)
        row.addWidget(self.compare_button)
        compare_layout.addLayout(row)
        self.compare_table = QTableWidget(0, 6)
        self.compare_table.setHorizontalHeaderLabels(["Run", "Algorithm", "Accuracy ± 95% CI", "Δ vs baseline",
                                                      "p (paired t)", "Verdict"])
        self.compare_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.compare_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.compare_table.verticalHeader().setVisible(False)
        compare_layout.addWidget(self.compare_table, 1)
        self.compare_note = QLabel(f"better / worse: significant at p < {SIGNIFICANCE} on identical episodes.")
        self.compare_note.setWordWrap(True)
        compare_layout.addWidget(self.compare_note)
        self.tabs.addTab(compare_page, "Compare runs")

        self.shot_plot = pg.PlotWidget()
        self.shot_plot.setLabel("bottom", "shots per class")
        self.shot_plot.setLabel("left", "test accuracy (%)")
        self.shot_plot.showGrid(x=True, y=True, alpha=0.25)
        self.shot_plot.addLegend(offset=(10, 10))
        self.tabs.addTab(self.shot_plot, "Accuracy vs shots")

        # Scrolls rather than forcing a tall minimum on the main window.
        left_scroll = QScrollArea()
        left_scroll.setWidgetResizable(True)
        left_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        left_scroll.setWidget(left)
        left_scroll.setMinimumWidth(260)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left_scroll)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([300, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(splitter)
        self.apply_theme(self.theme)

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.shot_plot.setBackground(theme.plot_background)
        for axis in ("left", "bottom"):
            self.shot_plot.getAxis(axis).setPen(theme.plot_foreground)
            self.shot_plot.getAxis(axis).setTextPen(theme.plot_foreground)
        if self.result is not None:
            self._show_confusion(self.result)

    # --- runs -----------------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        current = self.selected_run_id()
        checked = set(self.checked_run_ids())
        self.run_list.blockSignals(True)
        self.run_list.clear()
        for record in self.store.list():
            item = QListWidgetItem(f"{record.label}  ·  {record.algorithm}, {record.dataset} "
                                   f"{record.ways}-way {record.shots}-shot")
            item.setData(Qt.ItemDataRole.UserRole, record.id)
            item.setToolTip(f"{record.id}: {record.status}, {record.steps_done}/{record.steps_total} steps")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if record.id in checked else Qt.CheckState.Unchecked)
            self.run_list.addItem(item)
            if record.id == current:
                self.run_list.setCurrentItem(item)
        self.run_list.blockSignals(False)
        if self.run_list.currentItem() is None and self.run_list.count():
            self.run_list.setCurrentRow(0)
        elif self.run_list.currentItem() is not None:
            self._on_run_selected(self.run_list.currentItem())
        self._update_buttons()

    def selected_run_id(self) -> str | None:
        item = self.run_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select_run(self, run_id: str) -> None:
        for i in range(self.run_list.count()):
            if self.run_list.item(i).data(Qt.ItemDataRole.UserRole) == run_id:
                self.run_list.setCurrentRow(i)
                return
        self.refresh_runs()
        for i in range(self.run_list.count()):
            if self.run_list.item(i).data(Qt.ItemDataRole.UserRole) == run_id:
                self.run_list.setCurrentRow(i)

    def checked_run_ids(self) -> list[str]:
        return [self.run_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.run_list.count())
                if self.run_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, run_ids) -> None:
        wanted = set(run_ids)
        for i in range(self.run_list.count()):
            item = self.run_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in wanted
                               else Qt.CheckState.Unchecked)

    def _on_run_selected(self, item, _previous=None) -> None:
        self.saved_combo.clear()
        if item is None:
            return
        try:
            run = self.store.get(item.data(Qt.ItemDataRole.UserRole))
            config = run.config
        except Exception as exc:  # a damaged run folder must not break the tab
            self.status_label.setText(f"Cannot read this run: {exc}")
            return
        if self._settings_run != run.id:  # keep what the user typed when the same run is shown again
            self._settings_run = run.id
            self.ways_spin.setValue(config.dataset.ways)
            self.shots_spin.setValue(config.dataset.shots)
            self.episodes_spin.setValue(config.eval_episodes())
            self.seed_spin.setValue(config.evaluation.seed)
        for saved in reversed(run.evaluations()):
            text = (f"{100 * saved['accuracy']:.2f}% · {saved['ways']}-way {saved['shots']}-shot, "
                    f"{saved['episodes']} ep, seed {saved.get('seed')} ({saved.get('checkpoint', '')})")
            self.saved_combo.addItem(text, saved["file"])
        self._plot_shots(run)
        self._update_buttons()

    def _on_saved_chosen(self, index: int) -> None:
        run_id = self.selected_run_id()
        file = self.saved_combo.itemData(index)
        if run_id is None or not file:
            return
        try:
            result = self.store.get(run_id).load_evaluation(file)
        except Exception as exc:
            self.status_label.setText(f"Cannot read {file}: {exc}")
            return
        self.show_result(result, run_id)

    def show_saved(self, index: int = 0) -> None:
        """Show the saved result at ``index`` of the combo (newest first)."""
        self.saved_combo.setCurrentIndex(index)
        self._on_saved_chosen(index)

    # --- background jobs ------------------------------------------------------------------------------
    def _job(self, run_id: str, shots: int | None = None) -> dict[str, Any]:
        return {"run": run_id, "ways": self.ways_spin.value(), "shots": shots or self.shots_spin.value(),
                "episodes": self.episodes_spin.value(), "seed": self.seed_spin.value(),
                "checkpoint": self.checkpoint_combo.currentText()}

    def _start(self, kind: str, jobs: list[dict[str, Any]], reuse: bool) -> None:
        self._pending = kind
        self._set_busy(True, "starting…")
        self.task.start(evaluate_runs, self.store, jobs, reuse, skip_impossible=kind == "sweep")

    def evaluate_selected(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            self._start("evaluate", [self._job(run_id)], reuse=False)

    def evaluate_shot_sweep(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            self._start("sweep", [self._job(run_id, shots) for shots in self.sweep_shots], reuse=True)

    def compare_checked(self) -> None:
        run_ids = self.checked_run_ids()
        if len(run_ids) < 2:
            self.status_label.setText("Tick at least two runs to compare them.")
            self.compare_note.setText("Tick at least two runs in the list on the left to compare them.")
            return
        datasets = set()
        for run_id in run_ids:
            try:
                datasets.add(self._dataset_key(self.store.get(run_id)))
            except Exception as exc:
                self.status_label.setText(f"Cannot read run {run_id}: {exc}")
                return
        if len(datasets) > 1:  # different data means different episodes: a paired test would be meaningless
            text = ("The ticked runs use different datasets (or image sizes), so they cannot be tested on "
                    "identical episodes. Tick runs of one dataset.")
            self.status_label.setText(text)
            self.compare_note.setText(text)
            return
        self._compare_ids = run_ids
        self._start("compare", [self._job(run_id) for run_id in run_ids], reuse=True)

    def cancel(self) -> None:
        self.task.cancel()

    @property
    def is_busy(self) -> bool:
        return self.task.is_running

    def _set_busy(self, busy: bool, message: str = "") -> None:
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0 if message == "cancelled" else 1)
        self.status_label.setText(message)
        self._update_buttons()

    def _update_buttons(self) -> None:
        idle = not self.task.is_running
        has_run = self.selected_run_id() is not None
        self.evaluate_button.setEnabled(idle and has_run)
        self.sweep_button.setEnabled(idle and has_run)
        self.compare_button.setEnabled(idle)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status_label.setText(message)

    def _on_task_failed(self, message: str, details: str) -> None:
        self._set_busy(False, f"Evaluation failed: {message}")

    def _on_task_finished(self, results: list) -> None:
        kind, self._pending = self._pending, ""
        self._set_busy(False, "done")
        if not results:
            self.status_label.setText("Nothing could be evaluated: the test split has too few images per class.")
            return
        if kind == "compare":
            self._show_comparison(results)
        run_id, shown = results[-1].run, results[-1]
        if kind == "compare":  # keep the run selected in the list on display when it was compared
            by_id = dict(zip(self._compare_ids, results))
            run_id = self.selected_run_id() if self.selected_run_id() in by_id else self._compare_ids[0]
            shown = by_id[run_id]
        if kind == "sweep":
            wanted = self.shots_spin.value()
            shown = next((r for r in results if r.shots == wanted), results[0])
        self.show_result(shown, run_id)
        if self.selected_run_id() is not None:
            self._on_run_selected(self.run_list.currentItem())
        self.evaluation_finished.emit(shown)

    # --- showing one result ---------------------------------------------------------------------------
    def show_result(self, result, run_id: str) -> None:
        self.result = result
        self.result_run_id = run_id
        label = run_id
        try:
            label = self.store.record(run_id).label
        except Exception:
            pass
        self.summary_label.setText(f"<b>{label}</b>: {100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}% "
                                   f"<span style='color:{self.theme.muted_text}'>({result.ways}-way "
                                   f"{result.shots}-shot, {result.episodes} test episodes, seed {result.seed}, "
                                   f"{result.checkpoint or 'best'} checkpoint)</span>")
        self._show_per_class(result)
        self._show_confusion(result)
        self._clear_examples()

    def _show_per_class(self, result) -> None:
        table = self.per_class_table
        table.setSortingEnabled(False)
        counts = {}
        if len(result.confusion):
            counts = {name: int(result.confusion[i].sum()) for i, name in enumerate(result.confusion_classes)}
        items = sorted(result.per_class_accuracy.items(), key=lambda kv: (kv[1], kv[0]))
        table.setRowCount(len(items))
        for r, (name, accuracy) in enumerate(items):
            table.setItem(r, 0, _item(name))
            acc_item = QTableWidgetItem()
            acc_item.setData(Qt.ItemDataRole.DisplayRole, round(100 * accuracy, 2))
            acc_item.setBackground(QBrush(_heat(accuracy * 0.8, self.theme.is_dark)))
            acc_item.setForeground(QBrush(QColor("white" if accuracy > 0.7 else self.theme.plot_foreground)))
            table.setItem(r, 1, acc_item)
            count_item = QTableWidgetItem()
            count_item.setData(Qt.ItemDataRole.DisplayRole, counts.get(name, 0))
            table.setItem(r, 2, count_item)
        table.setSortingEnabled(True)
        table.sortItems(1, Qt.SortOrder.AscendingOrder)

    def _show_confusion(self, result) -> None:
        confusion = np.asarray(result.confusion)
        indexes = most_confused(confusion)
        self._confusion_indexes = indexes
        names = [result.confusion_classes[i] for i in indexes]
        table = self.confusion_table
        table.clear()
        table.setRowCount(len(indexes))
        table.setColumnCount(len(indexes))
        # Numbered columns keep the matrix narrow; the row headers carry the names.
        table.setHorizontalHeaderLabels([str(k + 1) for k in range(len(names))])
        table.setVerticalHeaderLabels([f"{k + 1}  {_short(n, 28)}" for k, n in enumerate(names)])
        for k, name in enumerate(names):
            table.horizontalHeaderItem(k).setToolTip(f"predicted: {name}")
            table.verticalHeaderItem(k).setToolTip(f"true: {name}")
        sub = confusion[np.ix_(indexes, indexes)] if len(indexes) else confusion
        rows = confusion[indexes].sum(1) if len(indexes) else np.zeros(0)
        dark = self.theme.is_dark
        for r in range(len(indexes)):
            for c in range(len(indexes)):
                count = int(sub[r, c])
                share = count / rows[r] if rows[r] else 0.0
                item = _item(str(count) if count else "", f"true {names[r]} → predicted {names[c]}: {count} "
                             f"({100 * share:.1f}% of its queries)")
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                colour = _heat(share, dark)
                if r != c and count:
                    colour = QColor(min(255, colour.red() + 90), colour.green(), colour.blue()) if not dark else \
                        QColor(min(255, colour.red() + 120), colour.green(), colour.blue())
                item.setBackground(QBrush(colour))
                item.setForeground(QBrush(QColor("white" if share > 0.55 else self.theme.plot_foreground)))
                table.setItem(r, c, item)
        shown, total = len(indexes), confusion.shape[0]
        self.confusion_note.setText(
            "Rows: true class, columns: predicted class; colour: share of the row's queries. "
            + (f"Showing the {shown} of {total} classes with the most errors." if shown < total else
               f"{total} classes."))

    # --- examples of a confusion cell -----------------------------------------------------------------
    def cell_classes(self, row: int, column: int) -> tuple[str, str]:
        names = self.result.confusion_classes
        return names[int(self._confusion_indexes[row])], names[int(self._confusion_indexes[column])]

    def open_cell(self, row: int, column: int) -> None:
        """Show the queries of true class ``row`` predicted as ``column`` with their support images."""
        if self.result is None or self.result_run_id is None:
            return
        if not self.result.query_records:
            self.examples_title.setText("This saved result has no per-query records (its .npz file is missing).")
            return
        true_name, pred_name = self.cell_classes(row, column)
        self.examples_title.setText(f"Loading the queries of '{true_name}' predicted as '{pred_name}'…")
        run = self.store.get(self.result_run_id)
        dataset = self._datasets.get(self._dataset_key(run))
        self.examples_task.start(gather_examples, run, self.result, true_name, pred_name, dataset)

    @staticmethod
    def _dataset_key(run) -> str:
        """What decides the test images (not the episode setting, nor training-only augmentation)."""
        import json

        section = {k: v for k, v in run.config.to_dict()["dataset"].items()
                   if k not in ("ways", "shots", "queries", "rotations", "download")}
        return json.dumps(section, sort_keys=True, default=str)

    def _clear_examples(self) -> None:
        while self.examples_grid.count():
            widget = self.examples_grid.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.examples = None

    def _on_examples(self, found: dict[str, Any]) -> None:
        if self.result_run_id is not None:
            try:
                self._datasets[self._dataset_key(self.store.get(self.result_run_id))] = found["dataset"]
            except Exception:
                pass
        self._clear_examples()
        self.examples = found
        kind = "correctly classified" if found["true"] == found["pred"] else "misclassified"
        shown = len(found["examples"])
        self.examples_title.setText(
            f"{found['total']} {kind} queries of '{found['true']}' predicted as '{found['pred']}'"
            + (f" (first {shown} shown)" if shown < found["total"] else "")
            + ". Per row: query (orange), support of the true class (blue), of the predicted class (red).")
        grid, t = self.examples_grid, self.theme
        for r, example in enumerate(found["examples"]):
            caption = QLabel(f"episode {example['episode']}\nquery {example['query']}\n"
                             f"p={example['confidence']:.2f}")
            caption.setStyleSheet(f"color: {t.muted_text};")
            grid.addWidget(caption, r, 0)
            column = 1
            if example["query_image"] is not None:
                grid.addWidget(_thumb(example["query_image"], t.query, f"query: true {example['true']}, "
                                      f"predicted {example['pred']}"), r, column)
            column += 1
            for image in example["true_support"]:
                grid.addWidget(_thumb(image, t.support, f"support of the true class {example['true']}"), r, column)
                column += 1
            if example["pred"] != example["true"]:
                for image in example["pred_support"]:
                    grid.addWidget(_thumb(image, t.error_text, f"support of the predicted class {example['pred']}"),
                                   r, column)
                    column += 1
        grid.setColumnStretch(grid.columnCount(), 1)
        grid.setRowStretch(len(found["examples"]), 1)
        self.examples_shown.emit(found)

    # --- comparison -----------------------------------------------------------------------------------
    def _show_comparison(self, results: list) -> None:
        ids = list(self._compare_ids)
        baseline_id = self.baseline_combo.currentData()
        if baseline_id not in ids:
            baseline_id = ids[0]
        self._comparison_results = dict(zip(ids, results))
        self.baseline_combo.blockSignals(True)
        self.baseline_combo.clear()
        for run_id in ids:
            try:
                label = self.store.record(run_id).label
            except Exception:
                label = run_id
            self.baseline_combo.addItem(label, run_id)
        self.baseline_combo.setCurrentIndex(ids.index(baseline_id))
        self.baseline_combo.blockSignals(False)
        self._retest()

    def _retest(self, *_args) -> None:
        results = getattr(self, "_comparison_results", {})
        baseline_id = self.baseline_combo.currentData()
        if baseline_id not in results:
            return
        base = results[baseline_id]
        rows = []
        for run_id, result in results.items():
            row = {"run": run_id, "algorithm": result.algorithm, "accuracy": result.accuracy, "ci95": result.ci95,
                   "baseline": run_id == baseline_id, "diff": 0.0, "p": 1.0, "verdict": "baseline"}
            if run_id != baseline_id:
                diff, p_value = paired_test(result.per_episode_accuracy, base.per_episode_accuracy)
                row.update(diff=diff, p=p_value, verdict=verdict(diff, p_value))
            rows.append(row)
        self.comparison = rows
        colours = {"better": self.theme.ok_text, "worse": self.theme.error_text}
        table = self.compare_table
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            try:
                label = self.store.record(row["run"]).label
            except Exception:
                label = row["run"]
            table.setItem(r, 0, _item(label, row["run"]))
            table.setItem(r, 1, _item(row["algorithm"]))
            table.setItem(r, 2, _item(f"{100 * row['accuracy']:.2f}% ± {100 * row['ci95']:.2f}%", align_right=True))
            table.setItem(r, 3, _item("" if row["baseline"] else f"{100 * row['diff']:+.2f} pts", align_right=True))
            table.setItem(r, 4, _item("" if row["baseline"] else f"{row['p']:.3g}", align_right=True))
            mark = {"better": "▲ better", "worse": "▼ worse", "same": "= same", "baseline": "baseline"}[row["verdict"]]
            item = _item(mark)
            if row["verdict"] in colours:
                item.setForeground(QBrush(QColor(colours[row["verdict"]])))
            table.setItem(r, 5, item)
        first = next(iter(results.values()))
        self.compare_note.setText(
            f"All runs on the same {first.episodes} test episodes ({first.ways}-way {first.shots}-shot, seed "
            f"{first.seed}). better / worse: paired t-test over per-episode accuracies, p < {SIGNIFICANCE}.")
        self.comparison_finished.emit(rows)

    # --- accuracy vs shots ----------------------------------------------------------------------------
    def shot_series(self, run) -> dict[int, list[tuple[int, float, float]]]:
        """{ways: [(shots, accuracy, ci95)]} from the run's saved test evaluations (newest per shot wins)."""
        series: dict[int, dict[int, tuple[float, float]]] = {}
        for saved in run.evaluations():
            if saved.get("split", "test") != "test":
                continue
            series.setdefault(int(saved["ways"]), {})[int(saved["shots"])] = (float(saved["accuracy"]),
                                                                              float(saved["ci95"]))
        return {ways: sorted((s, a, c) for s, (a, c) in by_shot.items()) for ways, by_shot in series.items()}

    def _plot_shots(self, run) -> None:
        plot = self.shot_plot
        plot.clear()
        series = self.shot_series(run)
        colours = self.theme.overlays
        for k, (ways, points) in enumerate(sorted(series.items())):
            shots = np.array([p[0] for p in points], float)
            acc = np.array([100 * p[1] for p in points])
            ci = np.array([100 * p[2] for p in points])
            colour = colours[k % len(colours)]
            plot.addItem(pg.ErrorBarItem(x=shots, y=acc, height=2 * ci, beam=0.2, pen=pg.mkPen(colour)))
            plot.plot(shots, acc, pen=pg.mkPen(colour, width=2), symbol="o", symbolBrush=colour,
                      symbolPen=colour, name=f"{ways}-way")
        if not series:
            text = pg.TextItem("No saved test results yet: press 'Evaluate at 1, 5, 10 shots'.",
                               color=self.theme.muted_text, anchor=(0.5, 0.5))
            plot.addItem(text)
            text.setPos(0.5, 0.5)

    # --- lifetime -------------------------------------------------------------------------------------
    def shutdown(self) -> bool:
        ok = self.task.shutdown()
        return self.examples_task.shutdown() and ok

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)
