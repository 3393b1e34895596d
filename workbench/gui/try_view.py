"""The "Try a task" view: build a small task from your own images (drop, paste, open or draw them), and see how a
trained model classifies queries. The logic is workbench.core.tryatask, shared with ``workbench try``; predictions
are computed in a background thread and refreshed whenever the support sets, queries or model change."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QBuffer, QByteArray, QEvent, QIODevice, QMimeData, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QApplication, QComboBox, QFileDialog, QFrame, QGridLayout, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QMenu, QProgressBar, QPushButton,
                               QScrollArea, QSizePolicy, QSlider, QSpinBox, QSplitter, QToolButton, QVBoxLayout,
                               QWidget)

from workbench.core.errors import WorkbenchError
from workbench.core.tryatask import (DEFAULT_DEMO, DEFAULT_SEED, Task, TaskImage, bundled_models, classify,
                                     descriptor_space_of, expand_sources, pca_2d, stroke_frame)
from workbench.gui.background import BackgroundTask
from workbench.gui.sketchpad import SketchPad
from workbench.gui.view_registry import register_view

THUMB = 56
CLASS_LABEL_WIDTH = 90  # class names beside the probability bars; longer ones are elided (whole in the tooltip)
CLASS_COLOURS = ("#1f6fd1", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#1098ad", "#f08c00", "#495057")
DEFAULT_TRACE_STEPS = 10
SLIDER_STEPS = 100  # positions of a slider over a continuous attribute's range
CLASSES_TITLE = "<b>Classes</b> (support images)"
DESCRIBED_TITLE = "<b>Classes</b> described by their attributes (this model needs no images of them)"
_MODEL_LOCK = threading.Lock()  # one classification at a time: adaptation seeds torch's global generator
_MODEL_CACHE: dict[str, object] = {}


def _load_cached(source: str):
    from workbench.core.runs import load_model
    from workbench.core.tryatask import resolve_model_source

    if source not in _MODEL_CACHE:
        _MODEL_CACHE.clear()  # keep one model in memory
        _MODEL_CACHE[source] = load_model(resolve_model_source(source))
    return _MODEL_CACHE[source]


def compute(progress, source: str, task: Task, seed: int, trace_steps: int) -> dict:
    """Worker: load (or reuse) the model, preprocess every image for the tooltips, classify."""
    with _MODEL_LOCK:
        model = _load_cached(source)  # a CheckpointError fails the job; the view shows its message
        previews = {}
        frame = stroke_frame(model)  # the strokes as the model sees them, for the tooltips
        for image in [img for c in task.classes for img in c.images] + task.queries:
            try:
                previews[id(image)] = (image, image.load(model.spec, frame))  # the image too: ids get reused
            except (WorkbenchError, OSError):
                pass
        progress(0, 1, "classifying")
        try:
            result = classify(model, task, seed, embeddings=True,
                              trace_steps=trace_steps if model.algorithm.gradient_based else None)
            error = ""
        except WorkbenchError as exc:
            result, error = None, str(exc)
    return {"source": source, "result": result, "error": error, "previews": previews,
            "gradient_based": model.algorithm.gradient_based, "algorithm": model.algorithm.title,
            "descriptor_space": descriptor_space_of(model)}


def _pixmap_of(image: TaskImage, size: int = THUMB) -> QPixmap:
    qimage = QImage()
    try:
        qimage.loadFromData(image.raw_bytes())
    except OSError:
        pass
    if qimage.isNull():
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.lightGray)
        return pixmap
    return QPixmap.fromImage(qimage).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)


def _png_base64(pixels: np.ndarray, scale: int = 4) -> str:
    from PIL import Image

    array = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    im = Image.fromarray(array)
    im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def preview_of(previews: dict, image: TaskImage) -> np.ndarray | None:
    found = previews.get(id(image))
    return found[1] if found is not None and found[0] is image else None


def preview_tooltip(image: TaskImage, pixels: np.ndarray | None) -> str:
    if pixels is None:
        return f"{image.label}<br><i>could not be read</i>"
    h, w = pixels.shape[:2]
    return (f"{image.label}<br>as the model sees it ({w}x{h}, {pixels.shape[2]} channel(s)):<br>"
            f"<img src='data:image/png;base64,{_png_base64(pixels)}'>")


def images_from_mime(mime: QMimeData, counter: list[int]) -> list[TaskImage]:
    """Files and folders (file URLs) or an image on the clipboard / in a drag."""
    if mime.hasUrls():
        paths = [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]
        if paths:
            return [TaskImage.from_file(p) for p in expand_sources(paths)]
    if mime.hasImage():
        qimage = QImage(mime.imageData())
        if not qimage.isNull():
            data = QByteArray()
            buffer = QBuffer(data)
            buffer.open(QIODevice.OpenModeFlag.WriteOnly)
            qimage.save(buffer, "PNG")
            counter[0] += 1
            return [TaskImage(f"pasted-{counter[0]}.png", data=bytes(data.data()))]
    return []


def _accepts(mime: QMimeData) -> bool:
    return mime.hasUrls() or mime.hasImage()


class DropArea(QFrame):
    """A panel that takes dropped files, folders and images anywhere on it."""

    dropped = Signal(object)  # QMimeData

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setAcceptDrops(True)

    def dragEnterEvent(self, event) -> None:
        if _accepts(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if _accepts(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.dropped.emit(event.mimeData())
        event.acceptProposedAction()


class ImageStrip(QListWidget):
    """Thumbnails that accept dropped files, folders and images."""

    dropped = Signal(object)  # QMimeData

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB, THUMB))
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setMovement(QListWidget.Movement.Static)
        self.setAcceptDrops(True)
        self.setDragEnabled(False)
        self.setMinimumHeight(THUMB + 16)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dragMoveEvent(self, event) -> None:
        if event.mimeData().hasUrls() or event.mimeData().hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self.dropped.emit(event.mimeData())
        event.acceptProposedAction()


class DescriptorSliders(QWidget):
    """A class described by attributes: one slider per field the model declares (title, range and help from the
    declaration), and a menu to start from one of the model's example classes."""

    changed = Signal(dict)  # {field name: value}, when the user sets a slider or picks an example

    def __init__(self, space, values: dict[str, float], parent: QWidget | None = None):
        super().__init__(parent)
        self.space = space
        self.sliders: dict[str, QSlider] = {}
        self.readouts: dict[str, QLabel] = {}
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setVerticalSpacing(0)
        self.like = QComboBox()
        self.like.setToolTip("Set every slider to the attributes of one of the model's example classes")
        self.like.addItem("set all like an example…", None)
        for name in space.presets:
            self.like.addItem(name, name)
        self.like.activated.connect(self._use_example)
        grid.addWidget(self.like, 0, 0, 1, 3)
        for row, spec in enumerate(space.fields, start=1):
            title = QLabel(spec.title)
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(*((int(spec.low), int(spec.high)) if spec.integer else (0, SLIDER_STEPS)))
            slider.setTracking(False)  # a drag classifies once, when released; the readout follows it live
            slider.sliderMoved.connect(lambda position, f=spec: self._show(f, position))
            slider.valueChanged.connect(lambda _position: self.changed.emit(self.values()))
            readout = QLabel()
            readout.setMinimumWidth(readout.fontMetrics().horizontalAdvance("-0.00") + 4)
            tip = f"<b>{spec.title}</b> ({spec.low:g} to {spec.high:g})<br>{spec.help}"
            for widget in (title, slider, readout):
                widget.setToolTip(tip)
            grid.addWidget(title, row, 0)
            grid.addWidget(slider, row, 1)
            grid.addWidget(readout, row, 2)
            self.sliders[spec.name], self.readouts[spec.name] = slider, readout
        grid.setColumnStretch(1, 1)
        self.set_values(values)

    def _value(self, spec, position: int) -> float:
        return float(position) if spec.integer else spec.low + (spec.high - spec.low) * position / SLIDER_STEPS

    def _position(self, spec, value: float) -> int:
        fraction = (min(max(value, spec.low), spec.high) - spec.low) / (spec.high - spec.low)
        return int(round(value)) if spec.integer else int(round(fraction * SLIDER_STEPS))

    def _show(self, spec, position: int) -> None:
        value = self._value(spec, position)
        self.readouts[spec.name].setText(f"{value:.0f}" if spec.integer else f"{value:.2f}")

    def values(self) -> dict[str, float]:
        return {spec.name: self._value(spec, self.sliders[spec.name].value()) for spec in self.space.fields}

    def set_values(self, values: dict[str, float]) -> None:
        for spec in self.space.fields:
            slider = self.sliders[spec.name]
            slider.blockSignals(True)
            slider.setValue(self._position(spec, values.get(spec.name, spec.low)))
            slider.blockSignals(False)
            self._show(spec, slider.value())

    def _use_example(self, index: int) -> None:
        name = self.like.itemData(index)
        if name is not None:
            self.set_values(dict(zip((f.name for f in self.space.fields), self.space.presets[name])))
            self.changed.emit(self.values())
        self.like.setCurrentIndex(0)


class ClassCard(DropArea):
    """One class: its name, its support images and ways to add more."""

    def __init__(self, view: "TryView", name: str, colour: str, space=None, values: dict | None = None):
        super().__init__()
        self.view, self.name = view, name
        self.sliders = DescriptorSliders(space, values or {}) if space is not None else None
        self.setAcceptDrops(self.sliders is None)  # a described class uses no images
        self.dropped.connect(lambda mime: self.view.drop_into(self.name, mime))
        self.setObjectName("class_card")
        self.setStyleSheet(f"QFrame#class_card {{ border: 1px solid palette(mid); border-left: 5px solid {colour}; "
                           "border-radius: 3px; }")
        self.name_edit = QLineEdit(name)
        self.name_edit.setMinimumWidth(72)
        self.name_edit.setToolTip("Class name (press Enter to rename)")
        self.name_edit.editingFinished.connect(self._rename)
        self.count_label = QLabel()
        add = QToolButton(text="Add…", toolTip="Add image files or a folder")
        add.clicked.connect(lambda: self.view.add_files_dialog(self.name))
        paste = QToolButton(text="Paste", toolTip="Paste an image or copied files")
        paste.clicked.connect(lambda: self.view.paste_into(self.name))
        remove = QToolButton(text="✕", toolTip="Remove this class")
        remove.clicked.connect(lambda: self.view.remove_class(self.name))
        top = QHBoxLayout()
        top.addWidget(self.name_edit, 1)
        top.addWidget(self.count_label)
        top.addWidget(remove)
        self.strip = ImageStrip()
        self.strip.setFixedHeight(THUMB + 24)
        self.strip.setToolTip("Drop images or folders here")
        self.strip.dropped.connect(lambda mime: self.view.drop_into(self.name, mime))
        buttons = QVBoxLayout()  # beside the strip, so a card is narrow enough for a 1280-pixel screen
        for button in (add, paste):
            button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            buttons.addWidget(button)
        buttons.addStretch(1)
        images = QHBoxLayout()
        images.addWidget(self.strip, 1)
        images.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 4, 4)
        layout.addLayout(top)
        layout.addLayout(images)
        if self.sliders is not None:  # attributes instead of images
            self.sliders.changed.connect(lambda values: self.view.describe(self.name, values))
            self.count_label.setText("described")
            layout.addWidget(self.sliders)
            for widget in (self.strip, add, paste):
                widget.hide()

    def _rename(self) -> None:
        new = self.name_edit.text().strip()
        if new != self.name:
            self.view.rename_class(self.name, new)

    def set_images(self, images: list[TaskImage], previews: dict) -> None:
        if self.sliders is not None:
            return
        self.strip.clear()
        for image in images:
            item = QListWidgetItem(_pixmap_of(image), "")
            item.setToolTip(preview_tooltip(image, preview_of(previews, image)))
            item.setSizeHint(QSize(THUMB + 8, THUMB + 8))
            self.strip.addItem(item)
        self.count_label.setText(f"{len(images)} image{'s' if len(images) != 1 else ''}")
        self._fit_height()

    def _fit_height(self) -> None:
        # One row of thumbnails, two once they wrap; more rows scroll.
        per_row = max(1, (self.strip.viewport().width() - 4) // (THUMB + 12))
        rows = 1 if self.strip.count() <= per_row else 2
        self.strip.setFixedHeight(rows * (THUMB + 12) + 12)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit_height()


class QueryRow(QFrame):
    """A query: thumbnail, predicted class, a probability bar per class, and a correction menu."""

    def __init__(self, view: "TryView", index: int, image: TaskImage):
        super().__init__()
        self.view, self.index, self.image = view, index, image
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.thumb = QLabel()
        self.thumb.setPixmap(_pixmap_of(image))
        self.thumb.setFixedSize(THUMB + 4, THUMB + 4)
        self.thumb.setToolTip(image.label)
        self.predicted = QLabel("…")
        self.predicted.setStyleSheet("font-weight: bold;")
        self.predicted.setMinimumWidth(40)  # a long class name is cut (it is in the tooltip) rather than widening
        self.predicted.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bars = QGridLayout()
        self.bars.setVerticalSpacing(1)
        self.bar_widgets: dict[str, QProgressBar] = {}
        self.wrong = QToolButton(text="Wrong?")
        self.wrong.setToolTip("This is wrong: move this image into the right class's support set")
        self.wrong.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.wrong.setMenu(QMenu(self.wrong))
        remove = QToolButton(text="✕", toolTip="Remove this query")
        remove.clicked.connect(lambda: self.view.remove_query(self.index))
        right = QVBoxLayout()
        head = QHBoxLayout()
        head.addWidget(self.predicted, 1)
        head.addWidget(remove)
        right.addLayout(head)
        right.addLayout(self.bars)
        left = QVBoxLayout()  # "Wrong?" under the thumbnail leaves the prediction the row's width
        left.addWidget(self.thumb)
        left.addWidget(self.wrong)
        left.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(left)
        layout.addLayout(right, 1)

    def set_classes(self, names: list[str]) -> None:
        menu = self.wrong.menu()
        menu.clear()
        for name in names:
            menu.addAction(f"It is {name}", lambda n=name: self.view.correct_query(self.index, n))

    def show_prediction(self, prediction, names: list[str], preview) -> None:
        self.thumb.setToolTip(preview_tooltip(self.image, preview))
        while self.bars.count():
            widget = self.bars.takeAt(0).widget()
            if widget is not None:
                widget.hide()  # deleteLater alone leaves it painted until the event loop runs
                widget.deleteLater()
        self.bar_widgets = {}
        if prediction is None:
            self.predicted.setText("could not be read" if preview is None else "—")
            return
        self.predicted.setText(f"{prediction.predicted}  ({prediction.probabilities[prediction.predicted]:.0%})")
        self.predicted.setToolTip(self.predicted.text())
        for row, name in enumerate(names):
            label = QLabel()
            label.setText(label.fontMetrics().elidedText(name, Qt.TextElideMode.ElideRight, CLASS_LABEL_WIDTH))
            label.setToolTip(name)
            bar = QProgressBar()
            bar.setMinimumWidth(60)
            bar.setRange(0, 1000)
            bar.setValue(int(round(prediction.probabilities[name] * 1000)))
            bar.setFormat(f"{prediction.probabilities[name]:.1%}")
            bar.setMaximumHeight(14)
            colour = CLASS_COLOURS[row % len(CLASS_COLOURS)]
            bar.setStyleSheet(f"QProgressBar {{ text-align: right; }} QProgressBar::chunk {{ background: {colour}; }}")
            self.bars.addWidget(label, row, 0)
            self.bars.addWidget(bar, row, 1)
            self.bar_widgets[name] = bar


class ColumnScroll(QScrollArea):
    """Scrolls up and down only: at least as wide as its contents' minimum, so a splitter cannot squeeze it into
    scrolling sideways."""

    def __init__(self, widget: QWidget, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setWidget(widget)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        hint = super().minimumSizeHint()
        inner = self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
        return QSize(max(hint.width(), inner + 2 * self.frameWidth()), hint.height())

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.LayoutRequest:  # the contents' minimum changed (a card was added)
            self.updateGeometry()
        return super().event(event)


def _scrolling_column(spacing: int) -> tuple[QVBoxLayout, QScrollArea]:
    """A vertical list that scrolls: widgets added to the returned layout stack from the top."""
    column = QVBoxLayout()
    column.setSpacing(spacing)
    holder = QWidget()
    holder_layout = QVBoxLayout(holder)
    holder_layout.setContentsMargins(0, 0, 0, 0)
    holder_layout.addLayout(column)
    holder_layout.addStretch(1)
    return column, ColumnScroll(holder)


@register_view
class TryView(QWidget):
    """Model chooser, class cards, queries with predictions, a sketch pad and an adaptation plot."""

    view_title = "Try a task"
    view_capability = "try_images"
    view_order = 30

    predictions_updated = Signal(object)  # TaskResult or None
    status_message = Signal(str)

    @classmethod
    def for_window(cls, window) -> "TryView":
        """A view whose model list follows the window's run store. MainWindow.shutdown() joins its thread, as it
        does for every view with a ``shutdown()``."""
        view = cls(window.store)
        window.run_store_changed.connect(view.refresh_models)
        return view

    def __init__(self, store=None, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.task = Task()
        self.result = None
        self.previews: dict = {}
        self.problems: list[tuple[str, str]] = []
        self.seed = DEFAULT_SEED
        self._paste_counter = [0]
        self._drawing_counter = 0
        self._last_dir = str(Path.home())
        self._stale = True
        self._theme = None
        self.descriptor_space = None  # the model's, when it classifies from descriptors: classes get sliders
        self.worker = BackgroundTask(self, finished=self._on_result, failed=self._on_failed)
        self._refresh_timer = QTimer(self, singleShot=True, interval=0)
        self._refresh_timer.timeout.connect(self._start_compute)
        self._build()
        self.refresh_models()
        for _ in range(2):
            self.add_class()
        self.refresh()

    # --- layout --------------------------------------------------------------------------------
    def _build(self) -> None:
        top = self._build_top()
        classes_widget = self._build_classes()
        queries_widget = self._build_queries()
        side_widget = self._build_side()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.setChildrenCollapsible(False)
        for widget, stretch in ((classes_widget, 3), (queries_widget, 3), (side_widget, 2)):
            splitter.addWidget(widget)
            splitter.setStretchFactor(splitter.count() - 1, stretch)
        splitter.setSizes([3000, 3000, 2000])  # weights (the side's wide plot would otherwise take the room)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)

    def _build_top(self) -> QHBoxLayout:
        """Model chooser, status line and the Task menu."""
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(24)
        self.model_combo.setToolTip("The trained model to adapt: a bundled demo, a run, or a checkpoint file")
        self.model_combo.activated.connect(self._on_model_activated)
        browse = QPushButton("Checkpoint file…")
        browse.clicked.connect(self.choose_checkpoint_dialog)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_combo)
        top.addWidget(browse)
        top.addWidget(self.status, 1)
        self.task_button = QToolButton(text="Task")
        self.task_button.setToolTip("Save or load this task as a folder, or export it as an image-folder dataset")
        self.task_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        task_menu = QMenu(self.task_button)
        task_menu.addAction("Save task…", self.save_task_dialog)
        task_menu.addAction("Load task…", self.load_task_dialog)
        task_menu.addAction("Export as image-folder dataset…", self.export_dataset_dialog)
        self.task_button.setMenu(task_menu)
        top.addWidget(self.task_button)
        return top

    def _build_classes(self) -> QWidget:
        """The class cards (support images) under an "Add class" header."""
        self.cards_layout, cards_scroll = _scrolling_column(spacing=6)
        add_class = QPushButton("Add class")
        add_class.clicked.connect(lambda: self.add_class())
        classes_box = QVBoxLayout()
        header = QHBoxLayout()
        self.classes_title = QLabel(CLASSES_TITLE)
        self.classes_title.setWordWrap(True)
        header.addWidget(self.classes_title, 1)
        header.addWidget(add_class)
        classes_box.addLayout(header)
        classes_box.addWidget(cards_scroll, 1)
        classes_widget = QWidget()
        classes_widget.setLayout(classes_box)
        self.cards: list[ClassCard] = []
        return classes_widget

    def _build_queries(self) -> DropArea:
        """The query drop strip and the rows of predictions; the whole panel takes drops."""
        self.query_drop = ImageStrip()
        self.query_drop.setMinimumHeight(THUMB // 2 + 28)
        self.query_drop.setMaximumHeight(THUMB // 2 + 28)
        self.query_drop.setToolTip("Drop query images or folders here")
        self.query_drop.dropped.connect(lambda mime: self.drop_into(None, mime))
        drop_hint = QLabel("Drop images or folders on this panel.")
        drop_hint.setStyleSheet("color: gray;")
        drop_hint.setWordWrap(True)  # its own line: a narrow column would cut it
        add_q = QToolButton(text="Add…")
        add_q.clicked.connect(lambda: self.add_files_dialog(None))
        paste_q = QToolButton(text="Paste")
        paste_q.clicked.connect(lambda: self.paste_into(None))
        clear_q = QToolButton(text="Clear")
        clear_q.clicked.connect(self.clear_queries)
        q_header = QHBoxLayout()
        q_header.addWidget(QLabel("<b>Queries</b>"), 1)
        for button in (add_q, paste_q, clear_q):
            q_header.addWidget(button)
        self.rows_layout, rows_scroll = _scrolling_column(spacing=4)
        rows_scroll.setAcceptDrops(False)
        self.query_rows: list[QueryRow] = []
        queries_box = QVBoxLayout()
        queries_box.addLayout(q_header)
        queries_box.addWidget(drop_hint)
        queries_box.addWidget(self.query_drop)
        queries_box.addWidget(rows_scroll, 1)
        queries_widget = DropArea()
        queries_widget.setLayout(queries_box)
        queries_widget.dropped.connect(lambda mime: self.drop_into(None, mime))
        return queries_widget

    def _build_side(self) -> QScrollArea:
        """The sketch pad and the adaptation / embedding plot."""
        self.sketch = SketchPad()
        self.sketch_target = QComboBox()
        self.sketch_target.setToolTip("Where the drawing goes")
        add_drawing = QToolButton(text="Add drawing")
        add_drawing.clicked.connect(self.add_drawing)
        save_drawing = QToolButton(text="Save…")
        save_drawing.setToolTip("Save the drawing as a PNG file")
        save_drawing.clicked.connect(self.save_drawing_dialog)
        self.sketch_target.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.sketch_target.setMinimumContentsLength(6)
        target_row = QHBoxLayout()
        target_row.addWidget(add_drawing)
        target_row.addWidget(QLabel("to"))
        target_row.addWidget(self.sketch_target, 1)
        target_row.addWidget(save_drawing)
        self.plot = pg.PlotWidget()
        self.plot.setMinimumHeight(180)
        self.plot.setBackground("w")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot_title = QLabel()
        self.plot_title.setWordWrap(True)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100)
        self.steps_spin.setValue(DEFAULT_TRACE_STEPS)
        self.steps_spin.setPrefix("inner steps: ")
        self.steps_spin.valueChanged.connect(lambda _: self.refresh())
        plot_head = QHBoxLayout()
        plot_head.addWidget(self.plot_title, 1)
        plot_head.addWidget(self.steps_spin)
        side = QVBoxLayout()
        side.addWidget(QLabel("<b>Draw</b>"))
        side.addWidget(self.sketch)
        side.addLayout(target_row)
        side.addSpacing(8)
        side.addLayout(plot_head)
        side.addWidget(self.plot, 1)
        side_inner = QWidget()
        side_inner.setLayout(side)
        side_widget = ColumnScroll(side_inner)  # scrolls rather than forcing a tall minimum window height
        side_widget.setFrameShape(QFrame.Shape.NoFrame)
        return side_widget

    # --- model -----------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        current = self.model_source()
        self.model_combo.clear()
        for name, path in bundled_models().items():
            self.model_combo.addItem(f"Demo: {name} (bundled)", name)
        if self.store is not None:
            try:
                records = self.store.list()
            except Exception:  # a broken run index must not break this view
                records = []
            for record in records:
                if record.status in ("created",) or not record.path:
                    continue
                if not any((Path(record.path) / "checkpoints" / f"{k}.pt").is_file() for k in ("best", "last")):
                    continue
                label = record.name or record.id
                self.model_combo.addItem(f"Run: {label} ({record.algorithm}, {record.dataset})", record.path)
        if current:
            self.set_model(current, refresh=False)
        else:  # first launch: the default demo, which needs no runs, data or network
            index = self.model_combo.findData(DEFAULT_DEMO)
            self.model_combo.setCurrentIndex(max(index, 0))

    def model_source(self) -> str | None:
        data = self.model_combo.currentData()
        return str(data) if data is not None else None

    def set_model(self, source: str, refresh: bool = True) -> None:
        """Select a model by bundled name, run folder or checkpoint path (added to the list if new)."""
        index = self.model_combo.findData(str(source))
        if index < 0:
            self.model_combo.addItem(f"File: {Path(source).name}", str(source))
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        if refresh:
            self.refresh()

    def _on_model_activated(self, _index: int) -> None:
        self.refresh()

    def choose_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a checkpoint", self._last_dir, "Checkpoints (*.pt)")
        if path:
            self.set_model(path)

    # --- classes ---------------------------------------------------------------------------------
    def add_class(self, name: str | None = None) -> str:
        name = name or self.task.unique_class_name()
        try:
            self.task.add_class(name)
        except WorkbenchError as exc:
            self._show_status(str(exc), error=True)
            return ""
        if self.descriptor_space is not None:
            self.task.describe(name, self._starting_values(len(self.task.classes) - 1))
        self._rebuild_cards()
        self.refresh()
        return name

    def remove_class(self, name: str) -> None:
        self.task.remove_class(name)
        self._rebuild_cards()
        self.refresh()

    def rename_class(self, old: str, new: str) -> bool:
        try:
            self.task.rename_class(old, new)
        except WorkbenchError as exc:
            self._show_status(str(exc), error=True)
            self._rebuild_cards()
            return False
        self._rebuild_cards()
        self.refresh()
        return True

    def card(self, name: str) -> ClassCard:
        return next(card for card in self.cards if card.name == name)

    def _rebuild_cards(self) -> None:
        for card in self.cards:
            self.cards_layout.removeWidget(card)
            card.hide()
            card.deleteLater()
        self.cards = []
        for index, task_class in enumerate(self.task.classes):
            card = ClassCard(self, task_class.name, CLASS_COLOURS[index % len(CLASS_COLOURS)], self.descriptor_space,
                             task_class.descriptor)
            card.set_images(task_class.images, self.previews)
            self.cards_layout.addWidget(card)
            self.cards.append(card)
        self.classes_title.setText(CLASSES_TITLE if self.descriptor_space is None else DESCRIBED_TITLE)
        target = self.sketch_target.currentData()
        self.sketch_target.clear()
        for name in self.task.class_names() if self.descriptor_space is None else []:
            self.sketch_target.addItem(f"class: {name}", name)
        self.sketch_target.addItem("queries", "")
        found = self.sketch_target.findData(target) if target is not None else -1
        self.sketch_target.setCurrentIndex(found if found >= 0 else self.sketch_target.count() - 1)
        for row in self.query_rows:
            row.set_classes(self.task.class_names())

    # --- described classes -------------------------------------------------------------------------
    def describe(self, name: str, values: dict[str, float]) -> None:
        """A class's attribute values (from its sliders)."""
        self.task.describe(name, values)
        self.refresh()

    def _starting_values(self, index: int) -> dict[str, float]:
        """The model's index-th example class, or its default values once the examples run out."""
        space = self.descriptor_space
        names = [f.name for f in space.fields]
        examples = list(space.presets.values())
        return dict(zip(names, examples[index] if index < len(examples) else space.defaults))

    def _use_descriptor_space(self, space, keep: bool = False) -> None:
        """Switch the classes between support images (None) and sliders over the model's descriptor fields;
        ``keep``: classes that already have a value for every field keep them (a loaded task)."""
        self.descriptor_space = space
        names = {f.name for f in space.fields} if space is not None else set()
        for index, task_class in enumerate(self.task.classes):
            if space is None:
                self.task.describe(task_class.name, None)
            elif not (keep and task_class.descriptor is not None and names <= set(task_class.descriptor)):
                self.task.describe(task_class.name, self._starting_values(index))
        self._rebuild_cards()
        self._rebuild_rows()
        self.refresh()

    # --- adding images -------------------------------------------------------------------------------
    def add_images(self, class_name: str | None, images: list[TaskImage]) -> None:
        """Support images of ``class_name``, or queries when it is None."""
        if not images:
            return
        if class_name is None:
            self.task.add_queries(images)
            self._rebuild_rows()
        else:
            self.task.add_support(class_name, images)
            self.card(class_name).set_images(self.task.get_class(class_name).images, self.previews)
        self.refresh()

    def add_files(self, class_name: str | None, paths) -> None:
        self.add_images(class_name, [TaskImage.from_file(p) for p in expand_sources(paths)])

    def drop_into(self, class_name: str | None, mime: QMimeData) -> int:
        images = images_from_mime(mime, self._paste_counter)
        self.add_images(class_name, images)
        return len(images)

    def paste_into(self, class_name: str | None) -> int:
        count = self.drop_into(class_name, QApplication.clipboard().mimeData())
        if count == 0:
            self._show_status("the clipboard holds no image and no files", error=True)
        return count

    def add_files_dialog(self, class_name: str | None) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add images", self._last_dir,
                                                "Images (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp);;"
                                                "All files (*)")
        if paths:
            self._last_dir = str(Path(paths[0]).parent)
            self.add_files(class_name, paths)

    def add_drawing(self) -> TaskImage | None:
        if self.sketch.canvas.is_empty():
            self._show_status("draw something first", error=True)
            return None
        self._drawing_counter += 1
        image = TaskImage.from_array(self.sketch.canvas.to_array(), f"drawing-{self._drawing_counter}.png",
                                     drawn=True)
        target = self.sketch_target.currentData()
        self.add_images(target or None, [image])
        self.sketch.canvas.clear()
        return image

    def save_drawing_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the drawing", self._last_dir, "PNG image (*.png)")
        if path:
            self.sketch.canvas.save(path)

    # --- queries -----------------------------------------------------------------------------------
    def remove_query(self, index: int) -> None:
        del self.task.queries[index]
        self._rebuild_rows()
        self.refresh()

    def clear_queries(self) -> None:
        self.task.queries.clear()
        self._rebuild_rows()
        self.refresh()

    def correct_query(self, index: int, class_name: str) -> None:
        """"This is wrong: it is class X": the query joins X's support set."""
        self.task.correct(index, class_name)
        self.card(class_name).set_images(self.task.get_class(class_name).images, self.previews)
        self._rebuild_rows()
        self.refresh()

    def _rebuild_rows(self) -> None:
        for row in self.query_rows:
            self.rows_layout.removeWidget(row)
            row.hide()
            row.deleteLater()
        self.query_rows = []
        self.query_drop.clear()
        for index, image in enumerate(self.task.queries):
            row = QueryRow(self, index, image)
            row.set_classes(self.task.class_names())
            row.wrong.setVisible(self.descriptor_space is None)  # a described class takes no images
            self.rows_layout.addWidget(row)
            self.query_rows.append(row)
            item = QListWidgetItem(_pixmap_of(image, THUMB // 2 + 8), "")
            item.setToolTip(image.label)
            self.query_drop.addItem(item)
        self.query_drop.setIconSize(QSize(THUMB // 2 + 8, THUMB // 2 + 8))

    # --- predictions -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute soon (changes in one event-loop pass are coalesced into one job); a hidden view waits until
        it is shown, so an unopened tab costs nothing."""
        if self.isVisible():
            self._refresh_timer.start()
        else:
            self._stale = True

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._stale:
            self._stale = False
            self._refresh_timer.start()

    def _start_compute(self) -> None:
        source = self.model_source()
        if source is None:
            self._show_status("choose a model", error=True)
            return
        self._show_status("classifying…")
        self.worker.start(compute, source, self.task.snapshot(), self.seed, self.steps_spin.value())

    @property
    def busy(self) -> bool:
        return self.worker.is_running or self._refresh_timer.isActive()

    def _on_result(self, output: dict) -> None:
        space = output["descriptor_space"]
        if space != self.descriptor_space:  # another model: sliders or images, then classify again
            self._use_descriptor_space(space, keep=True)
            return
        self.previews = output["previews"]
        self.result = output["result"]
        self.steps_spin.setVisible(output["gradient_based"])
        for card in self.cards:
            card.set_images(self.task.get_class(card.name).images, self.previews)
        by_index = {p.index: p for p in self.result.predictions} if self.result else {}
        names = self.result.classes if self.result else []
        for row in self.query_rows:
            row.show_prediction(by_index.get(row.index), names, preview_of(self.previews, row.image))
        if output["error"] and self.task_is_empty():
            # A fresh or cleared task is a starting point, not an error: say what to do next.
            self.problems = []
            self._show_status("Give at least two classes an image or two (drop, paste or draw them), then add "
                              "queries: they are classified as you go.")
        elif output["error"]:
            self.problems = []
            self._show_status(output["error"], error=True)
        else:
            self.problems = self.result.problems
            text = f"{output['algorithm']}: {len(names)}-way, {len(self.result.predictions)} queries classified"
            if self.problems:
                text += " — skipped: " + "; ".join(f"{Path(label).name}: {reason}" for label, reason in self.problems)
            self._show_status(text, error=bool(self.problems))
        self._draw_plot(output)
        self.predictions_updated.emit(self.result)

    def task_is_empty(self) -> bool:
        """No support image in any class and no query."""
        return not self.task.queries and not any(task_class.images for task_class in self.task.classes)

    def _on_failed(self, message: str, _details: str) -> None:
        # Old predictions would look like the new model's: clear them.
        self.result = None
        for row in self.query_rows:
            row.show_prediction(None, [], preview_of(self.previews, row.image))
        self.plot.clear()
        self.plot_title.setText("")
        self._show_status(message, error=True)
        self.predictions_updated.emit(None)

    def _draw_plot(self, output: dict) -> None:
        self.plot.clear()
        result = self.result
        if result is None:
            self.plot_title.setText("")
            return
        if output["gradient_based"] and result.trace:
            self.plot_title.setText("<b>Adaptation</b>: support loss per inner step")
            steps = [row["step"] for row in result.trace]
            losses = [row["support_loss"] for row in result.trace]
            self.plot.plot(steps, losses, pen=pg.mkPen("#1f6fd1", width=2), symbol="o", symbolSize=6,
                           symbolBrush="#1f6fd1")
            self.plot.setLabel("bottom", "inner step")
            self.plot.setLabel("left", "support loss")
            return
        if result.support_embeddings is None:
            self.plot_title.setText("")
            return
        self.plot_title.setText("<b>Embedding</b> (PCA): support ●, prototypes ★, queries ✕" if len(
            result.support_embeddings) else "<b>Embedding</b> (PCA): prototypes from the sliders ★, queries ✕")
        support, prototypes, queries = pca_2d(result.support_embeddings, result.prototype_embeddings,
                                              result.query_embeddings)
        outline = self._theme.plot_foreground if self._theme is not None else "k"
        for label in range(len(result.classes)):
            colour = CLASS_COLOURS[label % len(CLASS_COLOURS)]
            mask = result.support_labels == label
            self.plot.plot(support[mask, 0], support[mask, 1], pen=None, symbol="o", symbolSize=8,
                           symbolBrush=colour, symbolPen=None)
            self.plot.plot(prototypes[label:label + 1, 0], prototypes[label:label + 1, 1], pen=None, symbol="star",
                           symbolSize=18, symbolBrush=colour, symbolPen=outline)
        predicted = [result.classes.index(p.predicted) for p in result.predictions]
        for point, label in zip(queries, predicted):
            colour = CLASS_COLOURS[label % len(CLASS_COLOURS)]
            self.plot.plot([point[0]], [point[1]], pen=None, symbol="x", symbolSize=12, symbolBrush=colour,
                           symbolPen=pg.mkPen(colour, width=2))
        self.plot.setLabel("bottom", "PC 1")
        self.plot.setLabel("left", "PC 2")

    def apply_theme(self, theme) -> None:
        """Follow the app's light or dark theme (MainWindow.add_view calls this)."""
        self._theme = theme
        self.plot.setBackground(theme.plot_background)
        for name in ("bottom", "left"):
            axis = self.plot.getAxis(name)
            axis.setPen(theme.plot_foreground)
            axis.setTextPen(theme.plot_foreground)
        self.plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)

    def _show_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        colour = self._theme.error_text if self._theme is not None else "#c92a2a"
        self.status.setStyleSheet(f"color: {colour};" if error else "")
        self.status.setToolTip(text)
        self.status_message.emit(text)

    # --- save / load / export --------------------------------------------------------------------------
    def save_task(self, folder) -> Path:
        return self.task.save(folder)

    def load_task(self, folder) -> None:
        self.task = Task.load(folder)
        self._use_descriptor_space(self.descriptor_space, keep=True)

    def export_dataset(self, folder) -> Path:
        return self.task.export_dataset(folder)

    def _folder_action(self, title: str, action) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, self._last_dir)
        if not folder:
            return
        self._last_dir = folder
        try:
            action(folder)
            self._show_status(f"{title.rstrip('…')}: {folder}")
        except WorkbenchError as exc:
            from workbench.gui.dialogs import show_error

            show_error(self, title, str(exc))

    def save_task_dialog(self) -> None:
        self._folder_action("Save task", self.save_task)

    def load_task_dialog(self) -> None:
        self._folder_action("Load task", self.load_task)

    def export_dataset_dialog(self) -> None:
        self._folder_action("Export as image-folder dataset", self.export_dataset)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        self._refresh_timer.stop()
        return self.worker.shutdown(timeout_ms)

