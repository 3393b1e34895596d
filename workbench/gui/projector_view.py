"""The "Embeddings" tab: a 2-D projection of a probe task's support images, queries and class prototypes as the
model embeds them, replayed over training (snapshots saved in the run's probes.npz at each validation) or
computed now from a saved checkpoint. PCA per frame with signs aligned to the previous frame; t-SNE (and UMAP
when umap-learn is installed) on request, in a child process that Cancel terminates.

While a run trains the view follows it: on the window's throttled training records it re-reads probes.npz when
the file changed (at most once a second, in a background task that also projects the new frames), and the time
scrubber grows and stays on the newest frame unless it was moved back. A hidden view reads nothing (the reads
and the redraws would slow training down) and catches up when it is shown. Everything is read from the run
folder, so it works the same after a restart."""

from __future__ import annotations

import base64
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSlider,
                               QToolTip, QVBoxLayout, QWidget)

from workbench.gui import theme as themes
from workbench.gui.background import BackgroundTask
from workbench.gui.qimage import to_pixmap
from workbench.gui.view_registry import register_view

KINDS = ("support", "query", "prototype")
HOVER_RADIUS_PX = 10
STAGES = {"": "before adaptation", "adapted_": "after adaptation"}
RELOAD_SECONDS = 1.0  # while training, probes.npz is checked (and re-read if it changed) at most this often
# ... and at most this share of the time goes to reading it: the read holds the GIL the training thread needs, and
# it grows with the snapshots (up to probes.MAX_SNAPSHOTS of them), so slow reads space the next ones out.
RELOAD_SHARE = 0.05
UMAP_MISSING = "UMAP needs the optional package umap-learn, which is not installed (pip install umap-learn)."


def _frame_points(snapshot: dict[str, np.ndarray], meta: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    support = snapshot[prefix + "support"].astype(np.float32)
    query = snapshot[prefix + "query"].astype(np.float32)
    prototypes = snapshot[prefix + "prototypes"].astype(np.float32)
    ways = len(prototypes)
    return {"points": np.concatenate([support, query, prototypes]),
            "kind": np.array([0] * len(support) + [1] * len(query) + [2] * ways, np.int8),
            "label": np.concatenate([meta["support_y"], meta["query_y"], np.arange(ways)]).astype(np.int64),
            "pred": np.concatenate([meta["support_y"], snapshot["query_pred"], np.arange(ways)]).astype(np.int64),
            "row": np.concatenate([meta["support_row"], meta["query_row"], np.full(ways, -1)]).astype(np.int64)}


def project_frames(snapshots: list[dict[str, np.ndarray]], meta: dict[str, np.ndarray], progress=None,
                   known: dict[str, list[dict[str, Any]]] | None = None) -> dict:
    """{stage prefix: [frame dicts with "xy"]} for each stage the snapshots have; PCA signs follow the previous
    frame, so a replay moves smoothly instead of mirroring. ``known``: frames already projected for the first
    snapshots (a live reload), reused as they are."""
    from workbench.core.probes import pca_2d

    stages: dict[str, list[dict[str, Any]]] = {}
    for prefix in STAGES:
        # The last snapshot: leading ones may be left unread when their frames are known.
        if not snapshots or prefix + "support" not in snapshots[-1]:
            continue
        frames = list((known or {}).get(prefix, []))[:len(snapshots)]
        previous = frames[-1]["components"] if frames else None
        for k in range(len(frames), len(snapshots)):
            frame = _frame_points(snapshots[k], meta, prefix)
            frame["xy"], frame["components"] = pca_2d(frame["points"], previous)
            previous = frame["components"]
            frames.append(frame)
            if progress is not None:
                progress(k + 1, len(snapshots), "projecting")
        stages[prefix] = frames
    return stages


def _thumbnails(dataset, split_name: str, rows: np.ndarray) -> dict[int, np.ndarray]:
    split = dataset.split(split_name)
    return {int(r): split.images[int(r)].cpu().numpy() for r in np.unique(rows) if r >= 0}


def load_history(progress, store, run_id: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's saved snapshots, projected, with image thumbnails. Runs in a worker thread. ``previous``: what
    an earlier load of the same run gave; while the run trains, its frames and thumbnails are reused when its
    steps still begin the history (a thinned history is projected afresh)."""
    from workbench.core import data
    from workbench.core.probes import PROBE_FILE, ProbeHistory

    run = store.get(run_id)
    same_run = bool(previous and previous.get("run") == run_id and previous.get("source") == "history")
    old_steps = list(previous.get("steps") or []) if same_run else []
    # Snapshots whose frames are all known stay unread (decompressing them all dominated a live reload).
    complete = same_run and bool(previous.get("stages")) and all(
        len(frames) == len(old_steps) for frames in previous["stages"].values())
    history = ProbeHistory.load(run.path / PROBE_FILE, known_steps=old_steps if complete else None)
    if not len(history):
        return {"run": run_id, "steps": [], "stages": {}, "info": {}, "thumbs": {}, "source": "history"}
    rows = np.concatenate([history.meta["support_row"], history.meta["query_row"]])
    known, thumbs = None, None
    if same_run:
        if old_steps and history.steps[:len(old_steps)] == old_steps:
            known = previous.get("stages")
        if set(previous.get("thumbs") or {}) >= {int(r) for r in rows if r >= 0}:
            thumbs = previous["thumbs"]
    stages = project_frames(history.snapshots, history.meta, progress, known)
    if thumbs is None:
        dataset = data.load_dataset(run.config.dataset, progress)
        thumbs = _thumbnails(dataset, history.info.get("split", "val"), rows)
    return {"run": run_id, "steps": history.steps, "stages": stages, "info": history.info, "thumbs": thumbs,
            "source": "history"}


def embed_checkpoint(progress, store, run_id: str, kind: str = "best") -> dict[str, Any]:
    """One frame: the probe task embedded by the run's saved checkpoint. Runs in a worker thread."""
    from workbench.core import data, probes
    from workbench.core.runs import load_model

    run = store.get(run_id)
    loaded = load_model(run, "cpu", kind=kind)
    dataset = data.load_dataset(run.config.dataset, progress)
    fixed = probes.config_probe_episodes(dataset, run.config, 1)
    episode = fixed[0]
    snapshot = probes.embedding_snapshot(loaded.algorithm, episode)
    meta = probes.episode_meta(episode)
    split_name = probes.probe_split_name(dataset, run.config.dataset.ways)
    info = {"split": split_name, "class_names": list(fixed.split.class_names),
            "class_ids": [int(c) for c in episode.class_ids], "ways": episode.ways,
            "algorithm": loaded.algorithm.name, "gradient_based": bool(loaded.algorithm.gradient_based)}
    rows = np.concatenate([meta["support_row"], meta["query_row"]])
    return {"run": run_id, "steps": [loaded.step], "stages": project_frames([snapshot], meta), "info": info,
            "thumbs": _thumbnails(dataset, split_name, rows), "source": f"{kind} checkpoint"}


def layout_frame(progress, points: np.ndarray, method: str = "t-SNE", seed: int = 0) -> np.ndarray:
    """t-SNE or UMAP of one frame in a child process; a cancelled task's progress callback raises, which
    terminates the child (see probes.projection_2d)."""
    from workbench.core.probes import projection_2d

    return projection_2d(points, method, seed, progress)


def class_colours(ways: int) -> list[str]:
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f"]
    if ways <= len(base):
        return base[:ways]
    return [pg.intColor(i, hues=ways).name() for i in range(ways)]


@register_view
class ProjectorView(QWidget):
    view_title = "Embeddings"
    view_capability = "embeddings"
    view_order = 60

    frames_loaded = Signal(object)
    frame_shown = Signal(int)  # the frame index

    def __init__(self, store=None, theme: themes.Theme | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        from workbench.core.runs import RunStore

        self.store = store if store is not None else RunStore()
        self.theme = theme or themes.LIGHT
        self.data: dict[str, Any] | None = None
        self.frame_index = 0
        self.hover_index: int | None = None
        self.hover_text = ""
        self._layouts: dict[tuple[str, str, int], np.ndarray] = {}  # (method, stage, step) -> coordinates
        self._layout_key: tuple[str, str, int] | None = None  # what layout_task computes now
        self._legend_key: tuple | None = None  # what the legend shows, so it is rebuilt only when that changes
        # Following a training job: its run, the probes.npz mtime last read, when it was last checked.
        self.live_job: int | None = None
        self.live_run_id: str | None = None
        self.live_path: Path | None = None
        self.live_val_interval: int | None = None
        self._live_mtime: tuple[int, int] | None = None
        self._live_pending = False
        self._live_stale = False  # the snapshots may have changed while the view was hidden
        self._last_live_check = -RELOAD_SECONDS
        self._reload_seconds = RELOAD_SECONDS  # the least time between two checks (see RELOAD_SHARE)
        self._follow_newest = True
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.timeout.connect(self._check_live)
        # Loads and embeds the user asked for.
        self.task = BackgroundTask(self, progress=self._on_progress, finished=self._on_loaded,
                                   failed=lambda message, _d: self._set_busy(False, f"Failed: {message}"),
                                   cancelled=lambda: self._set_busy(False, "cancelled"))
        # Reloads while training: quiet, no busy state.
        self.live_task = BackgroundTask(self, finished=self._on_live_loaded, failed=self._on_live_failed)
        # t-SNE / UMAP in a child process.
        self.layout_task = BackgroundTask(
            self, progress=self._on_progress, finished=self._on_layout, failed=self._on_layout_failed,
            cancelled=lambda: self._set_busy(False, "Projection cancelled; PCA shown."))
        self._build()
        self.refresh_runs()

    @classmethod
    def for_window(cls, window) -> "ProjectorView":
        """A view that follows the window's training jobs live and its list of runs."""
        view = cls(getattr(window, "store", None), theme=getattr(window, "theme", themes.LIGHT))
        view.follow_window(window)
        return view

    def follow_window(self, window) -> None:
        window.training_started.connect(self.on_training_started)
        window.training_records.connect(self.on_training_records)
        window.training_finished.connect(self.on_training_finished)
        window.run_store_changed.connect(self.refresh_runs)

    # --- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        top = self._build_run_row()
        second = self._build_view_row()
        self._build_plot()
        scrub = self._build_scrub_row()
        for text, slot in (("PNG…", lambda: self._export_dialog("png")), ("SVG…", lambda: self._export_dialog("svg")),
                           ("CSV…", lambda: self._export_dialog("csv"))):
            button = QPushButton(f"Export {text}")
            button.clicked.connect(slot)
            second.addWidget(button)

        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumHeight(14)
        self.progress_bar.setTextVisible(False)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(second)
        layout.addWidget(self.plot, 1)
        layout.addLayout(scrub)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        self.apply_theme(self.theme)

    def _build_run_row(self) -> QHBoxLayout:
        """The run and what to show of it: its training history or its best checkpoint."""
        top = QHBoxLayout()
        top.addWidget(QLabel("Run"))
        self.run_combo = QComboBox()
        self.run_combo.setMinimumContentsLength(26)
        self.run_combo.activated.connect(lambda _i: self.load_selected())
        top.addWidget(self.run_combo, 2)
        self.history_button = QPushButton("Training history")
        self.history_button.setToolTip("Replay the snapshots saved at each validation during training")
        self.history_button.clicked.connect(self.load_selected)
        self.checkpoint_button = QPushButton("Embed best checkpoint")
        self.checkpoint_button.setToolTip("Embed the probe task with the run's saved best checkpoint now")
        self.checkpoint_button.clicked.connect(self.embed_selected)
        top.addWidget(self.history_button)
        top.addWidget(self.checkpoint_button)
        return top

    def _build_view_row(self) -> QHBoxLayout:
        """Features, projection and Cancel (the export buttons join this row later)."""
        second = QHBoxLayout()  # two rows keep the tab's minimum width small
        second.addWidget(QLabel("Features"))
        self.stage_combo = QComboBox()
        self.stage_combo.setMinimumContentsLength(16)
        self.stage_combo.currentIndexChanged.connect(lambda _i: self.show_frame(self.frame_index))
        second.addWidget(self.stage_combo)
        second.addWidget(QLabel("Projection"))
        self._build_projection_combo()
        second.addWidget(self.projection_combo)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        second.addWidget(self.cancel_button)
        second.addStretch(1)
        return second

    def _build_projection_combo(self) -> None:
        self.projection_combo = QComboBox()
        self.projection_combo.addItems(["PCA", "t-SNE", "UMAP"])
        self.projection_combo.setItemData(0, "Principal components of each frame; instant, follows training live",
                                          Qt.ItemDataRole.ToolTipRole)
        self.projection_combo.setItemData(1, "t-SNE (scikit-learn) of the frame shown, computed on request in a "
                                             "separate process; Cancel stops it", Qt.ItemDataRole.ToolTipRole)
        from workbench.core.probes import umap_available

        if umap_available():
            self.projection_combo.setItemData(2, "UMAP (umap-learn) of the frame shown, computed on request in a "
                                                 "separate process; Cancel stops it", Qt.ItemDataRole.ToolTipRole)
        else:  # listed but disabled, so the option is discoverable and says why it is off
            self.projection_combo.setItemText(2, "UMAP (not installed)")
            self.projection_combo.setItemData(2, UMAP_MISSING, Qt.ItemDataRole.ToolTipRole)
            self.projection_combo.model().item(2).setEnabled(False)
        self.projection_combo.currentIndexChanged.connect(self._on_projection_changed)

    def _build_plot(self) -> None:
        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(False)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.legend = self.plot.addLegend(offset=(10, 10), brush=pg.mkBrush(128, 128, 128, 40))
        self.scatter: dict[str, pg.ScatterPlotItem] = {}
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)

    def _build_scrub_row(self) -> QHBoxLayout:
        """The time slider over the saved snapshots."""
        scrub = QHBoxLayout()
        self.step_label = QLabel("step –")
        self.step_label.setMinimumWidth(140)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self._on_slider)
        scrub.addWidget(QLabel("Time"))
        scrub.addWidget(self.slider, 1)
        scrub.addWidget(self.step_label)
        return scrub

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.plot.setBackground(theme.plot_background)
        if self.data is not None:
            self.show_frame(self.frame_index)

    # --- runs and loading -----------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        current = self.run_combo.currentData()
        self.run_combo.clear()
        for record in self.store.list():
            self.run_combo.addItem(f"{record.label} · {record.algorithm}", record.id)
        index = self.run_combo.findData(current)
        self.run_combo.setCurrentIndex(max(index, 0))

    def select_run(self, run_id: str) -> None:
        index = self.run_combo.findData(run_id)
        if index < 0:
            self.refresh_runs()
            index = self.run_combo.findData(run_id)
        self.run_combo.setCurrentIndex(index)

    # --- following a training run ---------------------------------------------------------------------
    def on_training_started(self, job_id: int, info: dict) -> None:
        """Show the run that starts training and follow its snapshots as they are written."""
        run_id = (info or {}).get("run_id")
        if not run_id:
            return
        self.live_job, self.live_run_id = job_id, run_id
        self.live_path = Path(info["run_path"]) if info.get("run_path") else None
        self.live_val_interval = None
        try:
            run = self.store.get(run_id)
            self.live_path = self.live_path or run.path
            self.live_val_interval = int(run.config.training.val_interval)
        except Exception:  # a run folder being written may not read yet: the status text just says less
            pass
        self._live_mtime = None
        self._follow_newest = True
        self.refresh_runs()
        if self.run_combo.findData(run_id) >= 0:
            self.select_run(run_id)
        if self.data is None or self.data.get("run") != run_id or self.data.get("source") != "history":
            self.task.cancel()  # whatever was loading for another run would replace the live frames
            self._reset_projection()
            self.data = None
            self._clear()
            self.slider.setEnabled(False)
            self.step_label.setText("step –")
        self.status_label.setText(self._live_text())
        self._check_live()  # a resumed run already has snapshots

    def on_training_records(self, job_id: int, payload) -> None:
        if job_id != self.live_job:
            return
        validated = any(event.get("event") == "validation" for event in (payload or {}).get("events") or [])
        if validated or not self._live_timer.isActive():
            self._schedule_live_check()

    def on_training_finished(self, job_id: int, final: dict) -> None:
        """Read the last snapshots of the job followed; otherwise reload a run shown that has just finished."""
        self.refresh_runs()
        if job_id == self.live_job and self.live_job is not None:
            self.live_job = None
            self._live_timer.stop()
            self._check_live(force=True)
            return
        if self.data is not None and self.data.get("source") == "history" and \
                (final or {}).get("run_id") == self.data.get("run") and not self.is_busy:
            self.load_selected()

    @property
    def is_following(self) -> bool:
        """True while the run that trains (or just trained) is the one shown, so new snapshots replace it."""
        if self.live_run_id is None or self.run_combo.currentData() != self.live_run_id:
            return False
        return self.data is None or (self.data.get("run") == self.live_run_id and self.data.get("source") == "history")

    def _schedule_live_check(self) -> None:
        wait = self._last_live_check + self._reload_seconds - time.monotonic()
        if wait <= 0:
            self._check_live()
        elif not self._live_timer.isActive():
            self._live_timer.start(int(wait * 1000) + 1)

    def _check_live(self, force: bool = False) -> None:
        """Start re-reading probes.npz in the background if it changed since the last read (GUI thread: one stat)."""
        if self.live_run_id is None or self.live_path is None:
            return
        if not self.is_following:  # the user looks at another run: nothing to reload
            self._finish_following_if_done()
            return
        if not self.isVisible():  # read when shown (showEvent)
            self._live_stale = True
            if force:
                self._live_mtime = None
            return
        if self.task.is_running:  # the user loads something: try again later
            if not self._live_timer.isActive():
                self._live_timer.start(int(RELOAD_SECONDS * 1000))
            return
        if self.live_task.is_running:
            self._live_pending = True  # checked again when the running read ends
            return
        self._last_live_check = time.monotonic()
        from workbench.core.probes import PROBE_FILE

        try:
            stat = (self.live_path / PROBE_FILE).stat()
            mtime = (stat.st_mtime_ns, stat.st_size)  # the size too: some file systems keep coarse times
        except OSError:  # no snapshot yet
            mtime = None
        if mtime is None or (mtime == self._live_mtime and not force):
            self._finish_following_if_done()
            return
        self._live_mtime = mtime
        self._live_pending = False
        self.live_task.start(load_history, self.store, self.live_run_id, self.data)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self._live_stale:
            self._live_stale = False
            self._check_live()

    def _on_live_loaded(self, data: dict[str, Any]) -> None:
        spent = time.monotonic() - self._last_live_check  # the read, since it was started
        reread = self.data is not None and self.data.get("run") == data.get("run")  # the first also loads images
        self._reload_seconds = max(RELOAD_SECONDS, spent / RELOAD_SHARE) if reread else RELOAD_SECONDS
        if self.is_following and data.get("run") == self.live_run_id:
            if data["steps"]:
                self._apply_data(data)
            self.status_label.setText(self._live_text())
        if self._live_pending or self.live_job is None:
            self._schedule_live_check()  # the file may have changed while it was read; the final check ends it

    def _on_live_failed(self, message: str, _details: str) -> None:
        self._live_mtime = None  # read again at the next check
        if self.is_following:
            self.status_label.setText(f"Could not read the run's snapshots yet: {message}")
        if self.live_job is None:
            self._finish_following_if_done()

    def _finish_following_if_done(self) -> None:
        if self.live_job is None and not self.live_task.is_running:
            self.live_run_id = None
            self._live_timer.stop()

    def _live_text(self) -> str:
        count = len(self.data["steps"]) if self.data else 0
        k = self.live_val_interval
        if k == 0 and count == 0:
            return ("Following the run as it trains: with val_interval = 0 it validates only at the end, so its "
                    "one embedding snapshot appears when training ends.")
        every = f"every {k} steps (the val_interval setting)" if k else "at each validation"
        if k == 0:
            every = "which val_interval = 0 runs only at the end"
        if self.live_job is None:
            return (f"Training ended: {count} snapshot(s), the probe task embedded at each validation, {every}. "
                    f"Drag the time scrubber to replay them; hover a point for its image.")
        newest = "the time scrubber follows the newest snapshot" if self._follow_newest else \
            "drag the time scrubber to the right end to follow the newest snapshot again"
        return (f"Following the run as it trains: {count} snapshot(s) so far; the probe task is embedded at each "
                f"validation, {every}; {newest}. Hover a point for its image.")

    # --- loading on request ---------------------------------------------------------------------------
    def load_selected(self) -> None:
        run_id = self.run_combo.currentData()
        if run_id:
            self._set_busy(True, "loading the saved snapshots…")
            self.task.start(load_history, self.store, run_id)

    def embed_selected(self) -> None:
        run_id = self.run_combo.currentData()
        if run_id:
            self._set_busy(True, "embedding the probe task with the best checkpoint…")
            self.task.start(embed_checkpoint, self.store, run_id, "best")

    def cancel(self) -> None:
        self.task.cancel()
        if self.layout_task.is_running:
            self._reset_projection()
            if self.current_frame() is not None:
                self.show_frame(self.frame_index)

    def _reset_projection(self) -> None:
        """Stop a running t-SNE/UMAP (the task's progress check then terminates its process) and go back to
        PCA, so showing a frame does not start another one."""
        self.layout_task.cancel()
        self._layout_key = None
        self.projection_combo.blockSignals(True)
        self.projection_combo.setCurrentIndex(0)
        self.projection_combo.blockSignals(False)

    @property
    def is_busy(self) -> bool:
        return self.task.is_running or self.layout_task.is_running

    def _set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        for button in (self.history_button, self.checkpoint_button):
            button.setEnabled(not busy)
        if not busy:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        self.status_label.setText(message)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 0))  # 0..0: a busy indicator while a stage has no count
        self.progress_bar.setValue(done)
        self.status_label.setText(message)

    def _on_loaded(self, data: dict[str, Any]) -> None:
        if not data["steps"]:
            self.data = data
            self._layouts.clear()
            self._set_busy(False, "")
            self._clear()
            self.slider.setEnabled(False)
            self.status_label.setText(
                "This run has no saved embedding history (runs record one at each validation). Press "
                "'Embed best checkpoint' to embed the probe task with the saved model.")
            self.frames_loaded.emit(data)
            return
        self._set_busy(False, "")
        self._apply_data(data)
        if self.is_following:
            self.status_label.setText(self._live_text())
        else:
            self.status_label.setText(
                f"{len(data['steps'])} snapshot(s) from the {data['source']}; probe task from the "
                f"{data['info'].get('split', 'val')} classes. Hover a point for its image.")

    def _apply_data(self, data: dict[str, Any]) -> None:
        """Show loaded frames. A reload of the run shown keeps the stage, the projection and the frame the user
        chose; the scrubber then stays on the newest frame if it was there."""
        same = self.data is not None and self.data.get("steps") and self.data.get("run") == data["run"] and \
            self.data.get("source") == data["source"]
        shown_step = self.data["steps"][self.frame_index] if same and self.frame_index < len(self.data["steps"]) \
            else None
        if not same:
            self._layouts.clear()
            self._follow_newest = True
            self._reset_projection()
        self.data = data
        prefixes = list(data["stages"])
        if not same or prefixes != [self.stage_combo.itemData(i) for i in range(self.stage_combo.count())]:
            self.stage_combo.blockSignals(True)
            self.stage_combo.clear()
            for prefix in prefixes:
                self.stage_combo.addItem(STAGES[prefix] if len(prefixes) > 1 else "compared embedding", prefix)
            self.stage_combo.setCurrentIndex(self.stage_combo.count() - 1)  # after adaptation when there is one
            self.stage_combo.setEnabled(self.stage_combo.count() > 1)
            self.stage_combo.blockSignals(False)
        steps = data["steps"]
        if self._follow_newest or shown_step is None:
            frame = len(steps) - 1
        else:  # stay on the step shown (or the nearest one left after thinning)
            frame = int(np.argmin([abs(step - shown_step) for step in steps]))
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(steps) - 1)
        self.slider.setValue(frame)
        self.slider.setEnabled(len(steps) > 1)
        self.slider.blockSignals(False)
        self.show_frame(frame)
        self.frames_loaded.emit(data)

    def _on_slider(self, index: int) -> None:
        self._follow_newest = index == self.slider.maximum()
        self.show_frame(index)
        if self.is_following:
            self.status_label.setText(self._live_text())

    # --- drawing --------------------------------------------------------------------------------------
    def current_frame(self) -> dict[str, Any] | None:
        if self.data is None or not self.data["steps"]:
            return None
        frames = self.data["stages"].get(self.stage_combo.currentData() or "")
        if not frames:
            return None
        return frames[min(self.frame_index, len(frames) - 1)]

    def current_xy(self) -> np.ndarray | None:
        frame = self.current_frame()
        if frame is None:
            return None
        key = self._layout_key_shown()
        return self._layouts.get(key, frame["xy"]) if key is not None else frame["xy"]

    @property
    def projection(self) -> str:
        """"PCA", "t-SNE" or "UMAP"."""
        return ("PCA", "t-SNE", "UMAP")[max(0, self.projection_combo.currentIndex())]

    def _layout_key_shown(self) -> tuple[str, str, int] | None:
        if self.projection == "PCA" or self.data is None or not self.data["steps"]:
            return None
        step = self.data["steps"][min(self.frame_index, len(self.data["steps"]) - 1)]
        return self.projection, self.stage_combo.currentData() or "", int(step)

    def class_name(self, label: int) -> str:
        info = self.data["info"] if self.data else {}
        ids, names = info.get("class_ids") or [], info.get("class_names") or []
        if 0 <= label < len(ids) and ids[label] < len(names):
            return names[ids[label]]
        return f"class {label}"

    def _clear(self) -> None:
        for item in self.scatter.values():
            self.plot.removeItem(item)
        self.scatter.clear()
        self.legend.clear()
        self._legend_key = None

    def show_frame(self, index: int) -> None:
        """Draw a frame. The plot items and the legend are reused from frame to frame (only the points change),
        so scrubbing and live updates stay cheap on the GUI thread."""
        self.frame_index = int(index)
        frame = self.current_frame()
        if frame is None:
            self._clear()
            return
        xy = self.current_xy()
        colours = class_colours(int(frame["label"].max()) + 1)
        t = self.theme
        wrong = (frame["kind"] == 1) & (frame["label"] != frame["pred"])
        if not self.scatter:
            for z, kind in enumerate(KINDS + ("wrong",)):
                item = pg.ScatterPlotItem()
                item.setZValue(z)
                self.plot.addItem(item)
                self.scatter[kind] = item
        class_brushes = [pg.mkBrush(colour) for colour in colours]
        no_brush = pg.mkBrush(0, 0, 0, 0)
        for k, kind in enumerate(KINDS):
            idx = np.flatnonzero(frame["kind"] == k)
            labels = frame["label"][idx]
            if kind == "query":
                class_pens = [pg.mkPen(colour, width=2) for colour in colours]
                style = dict(symbol="o", size=11, brush=no_brush, pen=[class_pens[c] for c in labels])
            elif kind == "support":
                style = dict(symbol="o", size=9, pen=pg.mkPen(t.plot_background, width=0.5),
                             brush=[class_brushes[c] for c in labels])
            else:
                style = dict(symbol="star", size=22, pen=pg.mkPen(t.plot_foreground, width=1),
                             brush=[class_brushes[c] for c in labels])
            self.scatter[kind].setData(x=xy[idx, 0], y=xy[idx, 1], **style)
        # A wide ring in the foreground colour stays visible whatever the class colour.
        idx = np.flatnonzero(wrong)
        self.scatter["wrong"].setData(x=xy[idx, 0], y=xy[idx, 1], symbol="o", size=21, brush=no_brush,
                                      pen=pg.mkPen(t.plot_foreground, width=1.5))
        self._update_legend(colours)
        # Room on the left for the legend, so it does not cover points.
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
        self.plot.setXRange(x0 - 0.38 * w, x1 + 0.04 * w, padding=0)
        self.plot.setYRange(y0 - 0.06 * h, y1 + 0.06 * h, padding=0)
        steps = self.data["steps"]
        accuracy = 1.0 - wrong.sum() / max(int((frame["kind"] == 1).sum()), 1)
        note = " after adapting" if self.stage_combo.currentData() == "" and self.stage_combo.count() > 1 else ""
        self.step_label.setText(f"step {steps[self.frame_index]} ({self.frame_index + 1}/{len(steps)}) · "
                                f"{100 * accuracy:.0f}% right{note}")
        self.frame_shown.emit(self.frame_index)
        self._ensure_layout()

    def _update_legend(self, colours: list[str]) -> None:
        """One entry per class, then the marker meanings; rebuilt only when the classes or the theme change."""
        t = self.theme
        names = [self.class_name(c) for c in range(len(colours))]
        key = (tuple(colours), tuple(names), t.plot_foreground, t.muted_text)
        if key == self._legend_key:
            return
        self.legend.clear()
        self._legend_key = key
        for colour, name in zip(colours, names):
            self.legend.addItem(pg.ScatterPlotItem(symbol="o", size=9, brush=pg.mkBrush(colour), pen=None), name)
        for name, kwargs in (("support", dict(symbol="o", brush=pg.mkBrush(t.muted_text), pen=None)),
                             ("query", dict(symbol="o", brush=pg.mkBrush(0, 0, 0, 0), pen=pg.mkPen(t.muted_text,
                                                                                                    width=2))),
                             ("prototype", dict(symbol="star", size=14, brush=pg.mkBrush(t.muted_text))),
                             ("misclassified query", dict(symbol="o", size=14, brush=pg.mkBrush(0, 0, 0, 0),
                                                          pen=pg.mkPen(t.plot_foreground, width=1.5)))):
            self.legend.addItem(pg.ScatterPlotItem(**kwargs), name)

    # --- hover ----------------------------------------------------------------------------------------
    def point_info(self, index: int) -> dict[str, Any]:
        frame = self.current_frame()
        kind = KINDS[int(frame["kind"][index])]
        return {"kind": kind, "class": self.class_name(int(frame["label"][index])),
                "predicted": self.class_name(int(frame["pred"][index])), "row": int(frame["row"][index])}

    def nearest_point(self, scene_pos: QPointF) -> int | None:
        xy = self.current_xy()
        if xy is None or not len(xy):
            return None
        view_box = self.plot.getPlotItem().getViewBox()
        pixels = np.array([[p.x(), p.y()] for p in
                           (view_box.mapViewToScene(QPointF(float(x), float(y))) for x, y in xy)])
        distance = np.hypot(pixels[:, 0] - scene_pos.x(), pixels[:, 1] - scene_pos.y())
        best = int(np.argmin(distance))
        return best if distance[best] <= HOVER_RADIUS_PX else None

    def scene_position(self, index: int) -> QPointF:
        x, y = self.current_xy()[index]
        return self.plot.getPlotItem().getViewBox().mapViewToScene(QPointF(float(x), float(y)))

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        index = self.nearest_point(scene_pos)
        self.hover_index = index
        if index is None:
            self.hover_text = ""
            QToolTip.hideText()
            return
        info = self.point_info(index)
        lines = [f"<b>{info['kind']}</b>", f"class: {info['class']}"]
        if info["kind"] == "query":
            mark = "✓" if info["predicted"] == info["class"] else "✗"
            lines.append(f"predicted: {info['predicted']} {mark}")
        self.hover_text = "<br>".join(lines)
        image = (self.data.get("thumbs") or {}).get(info["row"])
        html = self.hover_text
        if image is not None:
            html = f"<img src='data:image/png;base64,{_png_base64(image)}'><br>{html}"
        view = self.plot
        QToolTip.showText(view.mapToGlobal(view.mapFromScene(scene_pos)), html, view)

    # --- t-SNE / UMAP ---------------------------------------------------------------------------------
    def _on_projection_changed(self, _index: int) -> None:
        if self.current_frame() is not None:
            self.show_frame(self.frame_index)

    def _ensure_layout(self) -> None:
        """In t-SNE/UMAP mode, start computing the shown frame's layout (PCA stands in until it arrives)."""
        frame, key = self.current_frame(), self._layout_key_shown()
        if frame is None or key is None or key in self._layouts:
            return
        if self.layout_task.is_running and self._layout_key == key:
            return
        self._layout_key = key
        self._set_busy(True, f"{key[0]} of this frame in a separate process; PCA shown meanwhile…")
        self.layout_task.start(layout_frame, frame["points"], key[0])  # supersedes the layout of another frame

    def _on_layout(self, coords: np.ndarray) -> None:
        key, self._layout_key = self._layout_key, None
        if key is None:  # cancelled just as it finished
            self._set_busy(False, "")
            return
        self._layouts[key] = np.asarray(coords, np.float64)
        self._set_busy(False, f"{key[0]} of this frame; each frame gets its own layout when shown.")
        if self.current_frame() is not None:
            self.show_frame(self.frame_index)

    def _on_layout_failed(self, message: str, _details: str) -> None:
        method = self._layout_key[0] if self._layout_key else "Projection"
        self._reset_projection()
        self._set_busy(False, f"{method} failed: {message}")
        if self.current_frame() is not None:
            self.show_frame(self.frame_index)

    # --- export ---------------------------------------------------------------------------------------
    def export_png(self, path: str | Path) -> Path:
        from pyqtgraph.exporters import ImageExporter

        exporter = ImageExporter(self.plot.getPlotItem())
        exporter.parameters()["width"] = max(800, int(self.plot.width()))
        exporter.export(str(path))
        return Path(path)

    def export_svg(self, path: str | Path) -> Path:
        # Qt's SVG generator: pyqtgraph's SVGExporter fails on some scatter symbols (pyqtgraph 0.13/0.14).
        from PySide6.QtCore import QRect, QSize
        from PySide6.QtGui import QPainter
        from PySide6.QtSvg import QSvgGenerator

        size = self.plot.size()
        generator = QSvgGenerator()
        generator.setFileName(str(path))
        generator.setSize(QSize(size.width(), size.height()))
        generator.setViewBox(QRect(0, 0, size.width(), size.height()))
        generator.setTitle("Embedding projection")
        painter = QPainter(generator)
        try:
            self.plot.render(painter)
        finally:
            painter.end()
        return Path(path)

    def export_csv(self, path: str | Path) -> Path:
        frame, xy = self.current_frame(), self.current_xy()
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "kind", "class", "predicted", "x", "y", "image_row"])
            step = self.data["steps"][self.frame_index] if frame is not None else ""
            for i in range(len(xy) if xy is not None else 0):
                info = self.point_info(i)
                writer.writerow([step, info["kind"], info["class"], info["predicted"], f"{xy[i, 0]:.6g}",
                                 f"{xy[i, 1]:.6g}", info["row"]])
        return Path(path)

    def _export_dialog(self, kind: str) -> None:
        if self.current_frame() is None:
            self.status_label.setText("Nothing to export yet.")
            return
        filters = {"png": "PNG image (*.png)", "svg": "SVG image (*.svg)", "csv": "CSV coordinates (*.csv)"}
        path, _ = QFileDialog.getSaveFileName(self, "Export embedding", f"embedding.{kind}", filters[kind])
        if path:
            {"png": self.export_png, "svg": self.export_svg, "csv": self.export_csv}[kind](path)
            self.status_label.setText(f"Saved {path}")

    def shutdown(self) -> bool:
        """Cancel everything (a t-SNE/UMAP process is terminated) and join the threads."""
        self._live_timer.stop()
        self.live_run_id = self.live_job = None
        ok = True
        for task in (self.task, self.live_task, self.layout_task):
            ok = task.shutdown() and ok
        return ok

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def _png_base64(image: np.ndarray) -> str:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    to_pixmap(image, 72).save(buffer, "PNG")
    return base64.b64encode(bytes(data)).decode("ascii")
