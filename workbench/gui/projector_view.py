"""The "Embeddings" tab: a 2-D projection of a probe task's support images, queries and class prototypes as the
model embeds them, replayed over training (snapshots saved in the run's probes.npz at each validation) or
computed now from a saved checkpoint. PCA per frame with signs aligned to the previous frame; t-SNE on request.
Heavy work runs in background tasks; everything is read from the run folder, so it works after a restart."""

from __future__ import annotations

import base64
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QPointF, Qt, Signal
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton,
                               QSlider, QToolTip, QVBoxLayout, QWidget)

from workbench.gui import theme as themes
from workbench.gui.background import BackgroundTask
from workbench.gui.evaluation_view import image_pixmap

KINDS = ("support", "query", "prototype")
HOVER_RADIUS_PX = 10
STAGES = {"": "before adaptation", "adapted_": "after adaptation"}


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


def project_frames(snapshots: list[dict[str, np.ndarray]], meta: dict[str, np.ndarray], progress=None) -> dict:
    """{stage prefix: [frame dicts with "xy"]} for each stage the snapshots have; PCA signs follow the previous
    frame, so a replay moves smoothly instead of mirroring."""
    from workbench.core.probes import pca_2d

    stages: dict[str, list[dict[str, Any]]] = {}
    for prefix in STAGES:
        if not snapshots or prefix + "support" not in snapshots[0]:
            continue
        frames, previous = [], None
        for k, snapshot in enumerate(snapshots):
            frame = _frame_points(snapshot, meta, prefix)
            frame["xy"], previous = pca_2d(frame["points"], previous)
            frames.append(frame)
            if progress is not None:
                progress(k + 1, len(snapshots), "projecting")
        stages[prefix] = frames
    return stages


def _thumbnails(dataset, split_name: str, rows: np.ndarray) -> dict[int, np.ndarray]:
    split = dataset.split(split_name)
    return {int(r): split.images[int(r)].cpu().numpy() for r in np.unique(rows) if r >= 0}


def load_history(progress, store, run_id: str) -> dict[str, Any]:
    """The run's saved snapshots, projected, with image thumbnails. Runs in a worker thread."""
    from workbench.core import data
    from workbench.core.probes import PROBE_FILE, ProbeHistory

    run = store.get(run_id)
    history = ProbeHistory.load(run.path / PROBE_FILE)
    if not len(history):
        return {"run": run_id, "steps": [], "stages": {}, "info": {}, "thumbs": {}, "source": "history"}
    stages = project_frames(history.snapshots, history.meta, progress)
    dataset = data.load_dataset(run.config.dataset, progress)
    rows = np.concatenate([history.meta["support_row"], history.meta["query_row"]])
    return {"run": run_id, "steps": history.steps, "stages": stages, "info": history.info,
            "thumbs": _thumbnails(dataset, history.info.get("split", "val"), rows), "source": "history"}


def embed_checkpoint(progress, store, run_id: str, kind: str = "best") -> dict[str, Any]:
    """One frame: the probe task embedded by the run's saved checkpoint. Runs in a worker thread."""
    from workbench.core import data, probes
    from workbench.core.checkpoints import load_model

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


def tsne_frame(progress, points: np.ndarray, seed: int = 0) -> np.ndarray:
    from workbench.core.probes import tsne_2d

    return tsne_2d(points, seed, progress)


def class_colours(ways: int) -> list[str]:
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f"]
    if ways <= len(base):
        return base[:ways]
    return [pg.intColor(i, hues=ways).name() for i in range(ways)]


class ProjectorView(QWidget):
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
        self._tsne: dict[tuple[str, int], np.ndarray] = {}  # (stage, frame) -> coordinates
        self.task = BackgroundTask(self)
        self.task.progress.connect(self._on_progress)
        self.task.finished.connect(self._on_loaded)
        self.task.failed.connect(lambda message, _d: self._set_busy(False, f"Failed: {message}"))
        self.task.cancelled.connect(lambda: self._set_busy(False, "cancelled"))
        self.tsne_task = BackgroundTask(self)
        self.tsne_task.progress.connect(self._on_progress)
        self.tsne_task.finished.connect(self._on_tsne)
        self.tsne_task.failed.connect(lambda message, _d: self._set_busy(False, f"t-SNE failed: {message}"))
        self.tsne_task.cancelled.connect(lambda: self._set_busy(False, "t-SNE cancelled"))
        self._build()
        self.refresh_runs()
        app = QApplication.instance()
        if app is not None:  # also join threads when the app quits without MainWindow.shutdown()
            app.aboutToQuit.connect(self.shutdown)

    # --- layout ---------------------------------------------------------------------------------------
    def _build(self) -> None:
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
        second = QHBoxLayout()  # two rows keep the tab's minimum width small
        second.addWidget(QLabel("Features"))
        self.stage_combo = QComboBox()
        self.stage_combo.setMinimumContentsLength(16)
        self.stage_combo.currentIndexChanged.connect(lambda _i: self.show_frame(self.frame_index))
        second.addWidget(self.stage_combo)
        second.addWidget(QLabel("Projection"))
        self.projection_combo = QComboBox()
        self.projection_combo.addItems(["PCA", "t-SNE"])
        self.projection_combo.currentIndexChanged.connect(self._on_projection_changed)
        second.addWidget(self.projection_combo)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        second.addWidget(self.cancel_button)
        second.addStretch(1)

        self.plot = pg.PlotWidget()
        self.plot.setAspectLocked(False)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.legend = self.plot.addLegend(offset=(10, 10), brush=pg.mkBrush(128, 128, 128, 40))
        self.scatter: dict[str, pg.ScatterPlotItem] = {}
        self.plot.scene().sigMouseMoved.connect(self._on_mouse_moved)

        scrub = QHBoxLayout()
        self.step_label = QLabel("step –")
        self.step_label.setMinimumWidth(140)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setEnabled(False)
        self.slider.valueChanged.connect(self.show_frame)
        scrub.addWidget(QLabel("Time"))
        scrub.addWidget(self.slider, 1)
        scrub.addWidget(self.step_label)
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

    def on_training_finished(self, _job_id: int, final: dict) -> None:
        """Reload the history when the run on display has just finished a training session."""
        self.refresh_runs()
        if self.data is not None and self.data.get("source") == "history" and \
                (final or {}).get("run_id") == self.data.get("run") and not self.is_busy:
            self.load_selected()

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
        self.tsne_task.cancel()

    @property
    def is_busy(self) -> bool:
        return self.task.is_running or self.tsne_task.is_running

    def _set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        for button in (self.history_button, self.checkpoint_button):
            button.setEnabled(not busy)
        if not busy:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        self.status_label.setText(message)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status_label.setText(message)

    def _on_loaded(self, data: dict[str, Any]) -> None:
        self.data = data
        self._tsne.clear()
        self.projection_combo.blockSignals(True)
        self.projection_combo.setCurrentIndex(0)
        self.projection_combo.blockSignals(False)
        if not data["steps"]:
            self._set_busy(False, "")
            self._clear()
            self.status_label.setText(
                "This run has no saved embedding history (runs record one at each validation). Press "
                "'Embed best checkpoint' to embed the probe task with the saved model.")
            self.frames_loaded.emit(data)
            return
        self._set_busy(False, f"{len(data['steps'])} snapshot(s) from the {data['source']}; probe task from the "
                              f"{data['info'].get('split', 'val')} classes. Hover a point for its image.")
        self.stage_combo.blockSignals(True)
        self.stage_combo.clear()
        for prefix in data["stages"]:
            label = STAGES[prefix] if len(data["stages"]) > 1 else "compared embedding"
            self.stage_combo.addItem(label, prefix)
        self.stage_combo.setCurrentIndex(self.stage_combo.count() - 1)  # after adaptation when there is one
        self.stage_combo.setEnabled(self.stage_combo.count() > 1)
        self.stage_combo.blockSignals(False)
        self.slider.blockSignals(True)
        self.slider.setRange(0, len(data["steps"]) - 1)
        self.slider.setValue(len(data["steps"]) - 1)
        self.slider.setEnabled(len(data["steps"]) > 1)
        self.slider.blockSignals(False)
        self.show_frame(len(data["steps"]) - 1)
        self.frames_loaded.emit(data)

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
        if self.projection_combo.currentText() == "t-SNE":
            return self._tsne.get((self.stage_combo.currentData() or "", self.frame_index), frame["xy"])
        return frame["xy"]

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

    def show_frame(self, index: int) -> None:
        self.frame_index = int(index)
        frame = self.current_frame()
        self._clear()
        if frame is None:
            return
        xy = self.current_xy()
        colours = class_colours(int(frame["label"].max()) + 1)
        t = self.theme
        brushes = [pg.mkBrush(colours[c]) for c in frame["label"]]
        wrong = (frame["kind"] == 1) & (frame["label"] != frame["pred"])
        style = {
            "support": dict(symbol="o", size=9, pen=pg.mkPen(t.plot_background, width=0.5)),
            "query": dict(symbol="o", size=11, brush=pg.mkBrush(0, 0, 0, 0)),
            "prototype": dict(symbol="star", size=22, pen=pg.mkPen(t.plot_foreground, width=1)),
        }
        for k, kind in enumerate(KINDS):
            mask = frame["kind"] == k
            idx = np.flatnonzero(mask)
            kwargs = dict(style[kind])
            if kind == "query":
                pens = [pg.mkPen(colours[frame["label"][i]], width=2) for i in idx]
                item = pg.ScatterPlotItem(x=xy[idx, 0], y=xy[idx, 1], pen=pens, **kwargs)
            else:
                item = pg.ScatterPlotItem(x=xy[idx, 0], y=xy[idx, 1], brush=[brushes[i] for i in idx], **kwargs)
            item.setZValue(k)
            self.plot.addItem(item)
            self.scatter[kind] = item
        if wrong.any():
            idx = np.flatnonzero(wrong)
            # A wide ring in the foreground colour stays visible whatever the class colour.
            item = pg.ScatterPlotItem(x=xy[idx, 0], y=xy[idx, 1], symbol="o", size=21,
                                      pen=pg.mkPen(t.plot_foreground, width=1.5), brush=pg.mkBrush(0, 0, 0, 0))
            item.setZValue(3)
            self.plot.addItem(item)
            self.scatter["wrong"] = item
        # Legend: one entry per class, then the marker meanings.
        for c, colour in enumerate(colours):
            sample = pg.ScatterPlotItem(symbol="o", size=9, brush=pg.mkBrush(colour), pen=None)
            self.legend.addItem(sample, self.class_name(c))
        for name, kwargs in (("support", dict(symbol="o", brush=pg.mkBrush(t.muted_text), pen=None)),
                             ("query", dict(symbol="o", brush=pg.mkBrush(0, 0, 0, 0), pen=pg.mkPen(t.muted_text,
                                                                                                    width=2))),
                             ("prototype", dict(symbol="star", size=14, brush=pg.mkBrush(t.muted_text))),
                             ("misclassified query", dict(symbol="o", size=14, brush=pg.mkBrush(0, 0, 0, 0),
                                                          pen=pg.mkPen(t.plot_foreground, width=1.5)))):
            self.legend.addItem(pg.ScatterPlotItem(**kwargs), name)
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
        self._ensure_tsne()

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

    # --- t-SNE ----------------------------------------------------------------------------------------
    def _on_projection_changed(self, _index: int) -> None:
        if self.current_frame() is not None:
            self.show_frame(self.frame_index)

    def _ensure_tsne(self) -> None:
        """In t-SNE mode, start computing the shown frame's layout (PCA stands in until it arrives)."""
        frame = self.current_frame()
        key = (self.stage_combo.currentData() or "", self.frame_index)
        if frame is None or self.projection_combo.currentText() != "t-SNE" or key in self._tsne:
            return
        if self.tsne_task.is_running and getattr(self, "_tsne_key", None) == key:
            return
        self._tsne_key = key
        self._set_busy(True, "t-SNE (scikit-learn) of this frame; PCA shown meanwhile…")
        self.tsne_task.start(tsne_frame, frame["points"])  # supersedes a t-SNE of another frame

    def _on_tsne(self, coords: np.ndarray) -> None:
        self._tsne[self._tsne_key] = np.asarray(coords, np.float64)
        self._set_busy(False, "t-SNE of this frame; each frame gets its own layout when shown.")
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
        ok = self.task.shutdown()
        return self.tsne_task.shutdown() and ok

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)


def _png_base64(image: np.ndarray) -> str:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image_pixmap(image, 72).save(buffer, "PNG")
    return base64.b64encode(bytes(data)).decode("ascii")
