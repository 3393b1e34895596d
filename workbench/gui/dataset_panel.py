"""The dataset panel: choose a dataset of the experiment kind, load it in the background, see its splits and one
sampled episode. It shows only the dataset fields the kind declares (``dataset_fields``) and takes every dataset
fact (zip form, split protocols, image size) from the dataset's declaration (``DatasetInfo``).

Loading goes through ``workbench.core.data.load_dataset`` in a worker thread (BackgroundTask) with a
progress bar and Cancel. The n-way / k-shot / q-query fields are checked live against every split with
``check_episode_setting``; the main window shows what to change next to the fields and keeps Run disabled.
"""

from __future__ import annotations

import html
import random
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QPlainTextEdit, QProgressBar, QPushButton, QSizePolicy, QToolTip,
                               QVBoxLayout, QWidget)

from workbench.core import catalog
from workbench.core.config import DatasetConfig, config_fields
from workbench.core import data as core_data
from workbench.core.data import EpisodeSampler, dataset_info, own_fields
from workbench.core.data.base import SPLIT_TITLES, SPLITS
from workbench.core.data.episodes import episode_options
from workbench.core.errors import ConfigError, EpisodeError
from workbench.core.kinds import DEFAULT_KIND, get_kind_class
from workbench.gui.background import BackgroundTask
from workbench.gui.hparam_form import HParamForm, narrow_combo
from workbench.gui.qimage import to_qimage
from workbench.gui.theme import LIGHT, Theme

EPISODE_FIELDS = ("ways", "shots", "queries")
# Fields with their own widgets; the rest of DatasetConfig goes into the generated options form.
CUSTOM_FIELDS = ("name", "root", "download", *EPISODE_FIELDS)
# Changing one of these means the data must be loaded again; the episode fields only re-check.
LOAD_FIELDS = ("name", "root", "split", "image_size", "rotations", "download", "split_seed", "sources")
MAX_SHOWN_QUERIES = 5
MAX_SHOWN_WAYS = 10


class EpisodeGrid(QWidget):
    """One episode as thumbnails: a row per class, support images framed in one colour, queries in another."""

    def __init__(self, parent: QWidget | None = None, theme: Theme = LIGHT):
        super().__init__(parent)
        self.theme = theme
        self.rows: list[tuple[str, list[QPixmap], list[QPixmap]]] = []
        self.hidden_ways = 0
        self.hidden_queries = 0
        self.message = "No episode yet."
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.setMouseTracking(True)

    def set_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.update()

    def set_message(self, message: str) -> None:
        self.rows = []
        self.message = message
        self.updateGeometry()
        self.update()

    def set_episode(self, class_names: list[str], support: list[list[np.ndarray]], query: list[list[np.ndarray]],
                    hidden_ways: int = 0, hidden_queries: int = 0) -> None:
        pixmaps = lambda images: [QPixmap.fromImage(to_qimage(im)) for im in images]  # noqa: E731
        self.rows = [(name, pixmaps(s), pixmaps(q)) for name, s, q in zip(class_names, support, query)]
        self.hidden_ways, self.hidden_queries = hidden_ways, hidden_queries
        self.message = ""
        self.updateGeometry()
        self.update()

    # --- geometry ---------------------------------------------------------------------------
    def _columns(self) -> tuple[int, int]:
        if not self.rows:
            return 0, 0
        return max(len(r[1]) for r in self.rows), max(len(r[2]) for r in self.rows)

    def _cell(self, width: int) -> int:
        shots, queries = self._columns()
        columns = shots + queries
        if not columns:
            return 40
        free = width - 24 - 12  # row labels and the gap between support and query
        return int(max(18, min(56, free / columns)))

    def _header_height(self) -> int:
        return self.fontMetrics().height() + 6

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        if not self.rows:
            return self.fontMetrics().height() * 3
        footer = self.fontMetrics().height() + 4 if (self.hidden_ways or self.hidden_queries) else 0
        return self._header_height() + len(self.rows) * self._cell(width) + footer + 4

    def sizeHint(self) -> QSize:
        return QSize(320, self.heightForWidth(320))

    def minimumSizeHint(self) -> QSize:
        return QSize(200, self.heightForWidth(200))

    def _cell_rect(self, row: int, column: int, is_query: bool) -> QRect:
        cell = self._cell(self.width())
        shots, _ = self._columns()
        x = 24 + column * cell + ((shots * cell + 12) if is_query else 0)
        y = self._header_height() + row * cell
        return QRect(x, y, cell, cell)

    # --- painting ---------------------------------------------------------------------------
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        palette_text = self.palette().windowText().color()
        if not self.rows:
            painter.setPen(palette_text)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)
            return
        cell = self._cell(self.width())
        shots, queries = self._columns()
        bold = QFont(self.font())
        bold.setBold(True)
        painter.setFont(bold)
        header = self._header_height()
        painter.setPen(QColor(self.theme.support))
        left_middle = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        painter.drawText(QRect(24, 0, max(shots * cell, 60), header), left_middle, "Support")
        painter.setPen(QColor(self.theme.query))
        query_x = 24 + shots * cell + 12
        painter.drawText(QRect(query_x, 0, max(queries * cell, 60), header), left_middle, "Query")
        painter.setFont(self.font())
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        for row, (_, support, query) in enumerate(self.rows):
            painter.setPen(palette_text)
            painter.drawText(QRect(0, header + row * cell, 20, cell), Qt.AlignmentFlag.AlignCenter, str(row + 1))
            for is_query, images, color in ((False, support, self.theme.support), (True, query, self.theme.query)):
                pen = QPen(QColor(color))
                pen.setWidth(2)
                for column, pixmap in enumerate(images):
                    rect = self._cell_rect(row, column, is_query).adjusted(2, 2, -2, -2)
                    painter.drawPixmap(rect, pixmap)
                    painter.setPen(pen)
                    painter.drawRect(rect.adjusted(-1, -1, 0, 0))
        if self.hidden_ways or self.hidden_queries:
            notes = []
            if self.hidden_ways:
                notes.append(f"{self.hidden_ways} more classes not shown")
            if self.hidden_queries:
                notes.append(f"{self.hidden_queries} more queries per class not shown")
            painter.setPen(QColor(self.theme.muted_text))
            y = header + len(self.rows) * cell + 2
            painter.drawText(QRect(0, y, self.width(), self.fontMetrics().height() + 2), Qt.AlignmentFlag.AlignLeft,
                             "; ".join(notes))

    def event(self, event) -> bool:
        if event.type() == event.Type.ToolTip and self.rows:
            point: QPoint = event.pos()
            for row, (name, support, query) in enumerate(self.rows):
                for is_query, images in ((False, support), (True, query)):
                    for column in range(len(images)):
                        if self._cell_rect(row, column, is_query).contains(point):
                            kind = "query" if is_query else "support"
                            QToolTip.showText(event.globalPos(), f"class {row + 1}: {name} ({kind})", self)
                            return True
            QToolTip.hideText()
            return True
        return super().event(event)


class DatasetPanel(QWidget):
    """Dataset choice, loading, split summary, episode preview and the episode-setting fields."""

    changed = Signal()  # any value changed (the main window re-validates)
    dataset_loaded = Signal(object)  # FewShotDataset
    loading_changed = Signal(bool)

    def __init__(self, parent: QWidget | None = None, theme: Theme = LIGHT, auto_load: bool = True,
                 kind: str = DEFAULT_KIND):
        super().__init__(parent)
        self.theme = theme
        self.kind = kind
        self.auto_load = auto_load
        self.dataset = None  # the loaded FewShotDataset
        self.loaded_key: tuple | None = None
        self.load_error: str | None = None
        self._loading_key: tuple | None = None
        self._preview_seed = 0
        self._silent = False
        self.episode_problem_text: str | None = None
        self._task = BackgroundTask(self, progress=self._on_load_progress, finished=self._on_loaded,
                                    failed=self._on_load_failed, cancelled=self._on_load_cancelled)
        self._load_timer = QTimer(self)
        self._load_timer.setSingleShot(True)
        self._load_timer.setInterval(300)  # typing a path should not start a load per keystroke
        self._load_timer.timeout.connect(self._auto_load)
        self._build()
        self._on_dataset_changed()

    # --- widgets ----------------------------------------------------------------------------
    def _build(self) -> None:
        specs = {spec.name: spec for spec in config_fields()["dataset"]}
        source = self._build_source(specs)
        splits_box = self._build_splits()
        episode_box = self._build_episodes(specs)
        preview_box = self._build_preview()

        layout = QVBoxLayout(self)
        layout.addWidget(source)
        layout.addWidget(episode_box)
        layout.addWidget(splits_box)
        layout.addWidget(preview_box)
        layout.addStretch(1)
        self._connect_signals()

    def _build_source(self, specs: dict) -> QGroupBox:
        """Dataset choice, location, options and the Load row."""
        self.name_combo = narrow_combo(QComboBox(), 16)
        self.name_combo.setObjectName("datasetName")
        self._fill_names()
        self.name_combo.setToolTip(specs["name"].help)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setObjectName("datasetDescription")

        self._build_root_row(specs)

        self.options = HParamForm([spec for name, spec in specs.items() if name not in CUSTOM_FIELDS])
        self.options.setObjectName("datasetOptions")

        load_row = self._build_load_row()

        source = QGroupBox("Source")
        form = QFormLayout(source)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # a narrow dock puts fields under labels
        form.addRow("Dataset", self.name_combo)
        form.addRow(self.description)
        form.addRow("Location", self.root_widget)
        form.addRow("", self.download_check)
        form.addRow(self.options)
        form.addRow(load_row)
        self.source_form = form
        return source

    def _build_root_row(self, specs: dict) -> None:
        """The location field with its Folder and Zip buttons, and the download check."""
        self.root_edit = QLineEdit()
        self.root_edit.setObjectName("datasetRoot")
        self.root_edit.setPlaceholderText("folder with the data")
        self.root_edit.setToolTip(specs["root"].help)
        self.root_edit.setClearButtonEnabled(True)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setToolTip("Choose the folder holding the dataset")
        self.zip_button = QPushButton("Zip…")
        self.download_check = QCheckBox("Download when not found")
        self.download_check.setObjectName("datasetDownload")
        self.download_check.setToolTip(specs["download"].help)
        root_row = QHBoxLayout()
        root_row.setContentsMargins(0, 0, 0, 0)
        root_row.addWidget(self.root_edit, 1)
        root_row.addWidget(self.folder_button)
        root_row.addWidget(self.zip_button)
        self.root_widget = QWidget()
        self.root_widget.setLayout(root_row)

    def _build_load_row(self) -> QHBoxLayout:
        """Progress bar, Load and Cancel."""
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("datasetLoad")
        self.load_button.setToolTip("Read the dataset now (it also loads by itself when its settings change)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("datasetCancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setObjectName("datasetProgress")
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setMinimumWidth(48)  # it stretches; a narrow dock should not scroll for it
        load_row = QHBoxLayout()
        load_row.addWidget(self.progress, 1)
        load_row.addWidget(self.load_button)
        load_row.addWidget(self.cancel_button)
        return load_row

    def _build_splits(self) -> QGroupBox:
        """The split summary and the skipped-files note."""
        self.status_label = QLabel()
        self.status_label.setObjectName("datasetStatus")
        self.status_label.setWordWrap(True)
        self.status_label.setTextFormat(Qt.TextFormat.RichText)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.skipped_label = QLabel()
        self.skipped_label.setObjectName("datasetSkipped")
        self.skipped_label.setWordWrap(True)
        self.skipped_label.hide()
        # Every skipped file with its reason, selectable so a user can copy the paths.
        self.skipped_list = QPlainTextEdit()
        self.skipped_list.setObjectName("datasetSkippedList")
        self.skipped_list.setReadOnly(True)
        self.skipped_list.hide()
        self.data_warnings_label = QLabel()
        self.data_warnings_label.setObjectName("datasetWarnings")
        self.data_warnings_label.setWordWrap(True)
        self.data_warnings_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.data_warnings_label.hide()
        splits_box = self.splits_box = QGroupBox("Splits")
        splits_layout = QVBoxLayout(splits_box)
        splits_layout.addWidget(self.status_label)
        splits_layout.addWidget(self.skipped_label)
        splits_layout.addWidget(self.skipped_list)
        splits_layout.addWidget(self.data_warnings_label)
        return splits_box

    def _build_episodes(self, specs: dict) -> QGroupBox:
        """The N-way / K-shot / Q-query fields and what to change when they do not fit."""
        self.episode_form = HParamForm([specs[name] for name in EPISODE_FIELDS])
        self.episode_form.setObjectName("episodeForm")
        for name, title in (("ways", "N-way"), ("shots", "K-shot"), ("queries", "Q-query")):
            self.episode_form.label(name).setText(title)
        self.episode_problem = QLabel()
        self.episode_problem.setObjectName("episodeProblem")
        self.episode_problem.setWordWrap(True)
        self.episode_problem.hide()
        episode_box = self.episode_box = QGroupBox("Episodes")
        episode_layout = QVBoxLayout(episode_box)
        episode_layout.addWidget(self.episode_form)
        episode_layout.addWidget(self.episode_problem)
        return episode_box

    def _build_preview(self) -> QGroupBox:
        """One sampled episode with its caption and Resample."""
        self.grid = EpisodeGrid(theme=self.theme)
        self.grid.setObjectName("episodeGrid")
        self.preview_caption = QLabel()
        self.preview_caption.setWordWrap(True)
        self.resample_button = QPushButton("Resample")
        self.resample_button.setObjectName("resampleEpisode")
        self.resample_button.setToolTip("Draw another episode from meta-train")
        caption_row = QHBoxLayout()
        caption_row.addWidget(self.preview_caption, 1)
        caption_row.addWidget(self.resample_button, 0, Qt.AlignmentFlag.AlignTop)
        preview_box = self.preview_box = QGroupBox("A sampled episode")
        preview_layout = QVBoxLayout(preview_box)
        preview_layout.addLayout(caption_row)
        preview_layout.addWidget(self.grid)
        return preview_box

    def _connect_signals(self) -> None:
        self.name_combo.currentIndexChanged.connect(self._on_dataset_changed)
        self.root_edit.textChanged.connect(lambda _: self._on_source_changed())
        self.download_check.toggled.connect(lambda _: self._on_source_changed())
        self.options.changed.connect(lambda _: self._on_source_changed())
        self.episode_form.changed.connect(lambda _: self._on_episode_changed())
        self.folder_button.clicked.connect(self._choose_folder)
        self.zip_button.clicked.connect(self._choose_zip)
        self.load_button.clicked.connect(self.load)
        self.cancel_button.clicked.connect(self.cancel_loading)
        self.resample_button.clicked.connect(lambda: self.resample(new_seed=True))

    def set_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.grid.set_theme(theme)
        self._refresh_status()

    def _fill_names(self) -> None:
        """The datasets that serve the kind, in catalog order (no signal)."""
        self.name_combo.blockSignals(True)
        self.name_combo.clear()
        for info in catalog.datasets_info(self.kind):
            self.name_combo.addItem(info["title"], info["name"])
            self.name_combo.setItemData(self.name_combo.count() - 1, info["description"],
                                        Qt.ItemDataRole.ToolTipRole)
        self.name_combo.blockSignals(False)

    def set_kind(self, kind: str) -> None:
        """Offer the datasets of ``kind``, pick its default one and show only the fields it declares; the fields
        start from their defaults (another kind's episode setting rarely fits)."""
        self.kind = kind
        self._silent = True
        try:
            self.options.reset_defaults()
            self.episode_form.reset_defaults()
        finally:
            self._silent = False
        self._fill_names()
        index = self.name_combo.findData(get_kind_class(kind).default_dataset)
        self.name_combo.blockSignals(True)
        self.name_combo.setCurrentIndex(max(0, index))
        self.name_combo.blockSignals(False)
        self._on_dataset_changed()

    def fields(self) -> tuple[str, ...]:
        """The dataset fields the kind declares; the others keep their defaults."""
        return tuple(get_kind_class(self.kind).dataset_fields)

    def has_episodes(self) -> bool:
        """Tasks are N-way episodes of classes (the preview and the episode check apply)."""
        return "ways" in self.fields()

    # --- values -----------------------------------------------------------------------------
    def dataset_name(self) -> str:
        return self.name_combo.currentData()

    def info(self):
        """The DatasetInfo of the chosen dataset (None when the kind has none installed)."""
        name = self.dataset_name()
        return dataset_info(name) if name else None

    def values(self) -> dict[str, Any]:
        """The dataset section of the config, as plain values: only the fields the kind declares."""
        values = {"name": self.dataset_name(), "root": self.root_edit.text().strip(),
                  "download": self.download_check.isChecked()}
        values.update(self.options.values())
        values.update(self.episode_form.values())
        fields = self.fields()
        return {key: value for key, value in values.items() if key in fields}

    def set_values(self, values: dict[str, Any]) -> None:
        self._silent = True
        try:
            index = self.name_combo.findData(values.get("name", self.dataset_name()))
            if index >= 0:
                self.name_combo.setCurrentIndex(index)
            self.root_edit.setText(str(values.get("root", "")))
            self.download_check.setChecked(bool(values.get("download", False)))
            self.options.set_values({k: v for k, v in values.items() if k in self.options.names()})
            self.episode_form.set_values({k: v for k, v in values.items() if k in EPISODE_FIELDS})
        finally:
            self._silent = False
        self._on_dataset_changed()

    def load_key(self) -> tuple:
        values = self.values()
        return tuple(values.get(name) for name in LOAD_FIELDS)

    @property
    def is_loading(self) -> bool:
        return self._task.is_running

    def is_ready(self) -> bool:
        """The data for the current settings is loaded."""
        return self.dataset is not None and self.loaded_key == self.load_key()

    # --- reactions --------------------------------------------------------------------------
    def _on_dataset_changed(self) -> None:
        info, fields = self.info(), self.fields()
        if info is None:
            self.description.setText("No installed dataset serves this kind; a plugin can add one.")
            for widget in (self.root_widget, self.download_check):
                self.source_form.setRowVisible(widget, False)
            self._on_source_changed()
            return
        self.description.setText(info.description)
        needs_root = info.needs_root and "root" in fields
        self.source_form.setRowVisible(self.root_widget, needs_root)
        self.zip_button.setVisible(info.has_zip_form)
        self.zip_button.setToolTip(f"Choose a {info.title} zip file")
        self.source_form.setRowVisible(self.download_check, info.downloadable and "download" in fields)
        # Options that mean nothing for this kind or dataset are hidden rather than ignored silently.
        others_own = own_fields() - set(info.own_fields)  # fields another dataset reads alone
        for name in self.options.names():
            self.options.set_row_visible(name, name in fields and name not in others_own)
        self._show_split_choices(info, "split" in fields)
        self._show_image_size(info)
        for name in EPISODE_FIELDS:
            self.episode_form.set_row_visible(name, name in fields)
        self.episode_box.setTitle("Episodes" if self.has_episodes() else "Tasks")
        self.episode_box.setVisible(any(name in fields for name in EPISODE_FIELDS))
        self.preview_box.setVisible(self.has_episodes())
        self.splits_box.setTitle("Splits" if self.has_episodes() else "Data")
        self._on_source_changed()

    def _show_split_choices(self, info, shown: bool) -> None:
        """Offer the split protocols the dataset declares (its usual one is "default")."""
        names = self.options.names()
        if "split" in names:
            editor = self.options.editor("split")
            view = editor.view()
            for row in range(editor.count()):
                view.setRowHidden(row, editor.itemData(row) not in ("default", *info.splits))
            if editor.currentData() not in ("default", *info.splits):
                editor.setCurrentIndex(max(0, editor.findData("default")))
            self.options.set_row_visible("split", shown and bool(info.splits))
        if "split_seed" in names:  # the seed of a split by ratio
            self.options.set_row_visible("split_seed", shown and "ratio" in info.splits)

    def _show_image_size(self, info) -> None:
        if "image_size" in self.options.names():
            size = info.default_image_size
            editor = self.options.editor("image_size")
            editor.setSpecialValueText(f"dataset default ({size}×{size})" if size else "dataset default")

    def _on_source_changed(self) -> None:
        if self._silent:
            return
        if self.is_ready():
            self._refresh_status()
            if self.has_episodes():  # e.g. episodes within one domain: the preview follows
                self.resample(new_seed=False)
        else:
            self.load_error = None
            self._refresh_status()
            if self.auto_load:
                self._load_timer.start()
        self.changed.emit()

    def _on_episode_changed(self) -> None:
        if self._silent:
            return
        self.resample(new_seed=False)
        self.changed.emit()

    def _auto_load(self) -> None:
        if self.is_ready() or (self.is_loading and self._loading_key == self.load_key()):
            return
        info = self.info()
        if info is None or info.needs_root and not self.root_edit.text().strip():
            return  # wait for a folder
        self.load()

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, f"Choose the {self.info().title} folder",
                                                  self.root_edit.text())
        if folder:
            self.root_edit.setText(folder)

    def _choose_zip(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Choose a {self.info().title} zip file",
                                              self.root_edit.text(), "Zip files (*.zip)")
        if path:
            self.root_edit.setText(path)

    # --- loading ----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the dataset for the current settings in the background (a running load is superseded)."""
        self._load_timer.stop()
        try:
            from workbench.core.hparams import build

            config = build(DatasetConfig, self.values(), "dataset")
        except Exception as exc:  # ConfigError: show it where the data would be
            self.load_error = str(exc)
            self._refresh_status()
            return
        self.load_error = None
        self._loading_key = self.load_key()
        self.progress.setRange(0, 0)
        self.progress.setFormat("Loading…")
        self.cancel_button.setEnabled(True)
        # Through the module, so tests can substitute load_dataset.
        self._task.start(lambda progress, cfg: core_data.load_dataset(cfg, progress), config)
        self.loading_changed.emit(True)
        self._refresh_status()
        self.changed.emit()

    def cancel_loading(self) -> None:
        self._task.cancel()

    def shutdown(self, timeout_ms: int = 30_000) -> bool:
        self._load_timer.stop()
        return self._task.shutdown(timeout_ms)

    def _on_load_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        self.progress.setFormat(message or "Loading…")

    def _finish_loading(self) -> None:
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.loading_changed.emit(False)

    def _on_loaded(self, dataset) -> None:
        self.dataset = dataset
        self.loaded_key = self._loading_key
        self._finish_loading()
        self.progress.setValue(1)
        self.progress.setFormat("Loaded")
        self._refresh_status()
        self.resample(new_seed=False)
        self.dataset_loaded.emit(dataset)
        self.changed.emit()
        if not self.is_ready() and self.auto_load:
            self._load_timer.start()  # settings changed while loading

    def _on_load_failed(self, message: str, details: str) -> None:
        self.dataset = None
        self.loaded_key = None
        self.load_error = message
        self._finish_loading()
        self.progress.setValue(0)
        self.progress.setFormat("Could not load")
        self._refresh_status()
        self.grid.set_message("No episode: the dataset is not loaded.")
        self.changed.emit()

    def _on_load_cancelled(self) -> None:
        self._finish_loading()
        self.progress.setValue(0)
        self.progress.setFormat("Cancelled")
        self.load_error = "Loading was cancelled; press Load to try again."
        self._refresh_status()
        self.changed.emit()

    # --- display ----------------------------------------------------------------------------
    def _splits_table(self, splits: dict, theme: Theme) -> str:
        """Classes and images per split, then images per class, size and channels: narrow enough for the dock
        (numbers never break from their units)."""
        rows, spreads = [], []
        for split in SPLITS:
            part = splits[split]
            counts = part.class_counts()
            spreads.append(f"{min(counts)}–{max(counts)}" if counts and min(counts) != max(counts) else (
                f"{counts[0]}" if counts else "0"))
            rows.append(f"<tr><td>{SPLIT_TITLES[split]}</td><td align='right'>&nbsp;{part.num_classes:,}&nbsp;classes"
                        f"</td><td align='right'>&nbsp;{len(part):,}&nbsp;images</td></tr>")
        if len(set(spreads)) == 1:
            per_class = f"{spreads[0]} images per class"
        else:
            per_class = "images per class: " + ", ".join(f"{spread} ({SPLIT_TITLES[split]})"
                                                          for split, spread in zip(SPLITS, spreads))
        spec = self.dataset.spec
        return (f"<table>{''.join(rows)}</table><span style='color:{theme.muted_text}'>{per_class}; "
                f"{spec.image_size}×{spec.image_size}, {spec.channels} channel{'s' if spec.channels > 1 else ''}"
                "</span>")

    def _refresh_status(self) -> None:
        theme = self.theme
        if self.load_error:
            self.status_label.setText(f"<span style='color:{theme.error_text}'>{html.escape(self.load_error)}</span>")
            self._hide_data_notes()
            return
        if self.is_loading:
            self.status_label.setText("Loading the dataset…")
            return
        if not self.is_ready():
            info = self.info()
            if info is None:
                self.status_label.setText("No dataset.")
            elif info.needs_root and not self.root_edit.text().strip():
                self.status_label.setText(f"Choose the folder holding {html.escape(info.title)}"
                                          + (" or allow downloading." if info.downloadable else "."))
            else:
                self.status_label.setText("Not loaded yet.")
            self._hide_data_notes()
            return
        splits = getattr(self.dataset, "splits", None) or {}
        if not all(hasattr(splits.get(split), "class_counts") for split in SPLITS):
            # Generated tasks (no class splits): the declaration says what they are.
            self.status_label.setText(f"Loaded {html.escape(self.info().title)}: tasks are drawn as needed.")
            self._hide_data_notes()
            return
        self.status_label.setText(self._splits_table(splits, theme))
        self._show_data_notes(theme)

    def _short_path(self, path: str) -> str:
        """A skipped file's path relative to the dataset's folder (the folder is shown above)."""
        root = self.root_edit.text().strip()
        return path[len(root):].lstrip("/\\") if root and path.startswith(root) else path

    def _hide_data_notes(self) -> None:
        for widget in (self.skipped_label, self.skipped_list, self.data_warnings_label):
            widget.hide()

    def _show_data_notes(self, theme: Theme) -> None:
        """The files that could not be read (all of them, with why) and the dataset's warnings (class folders
        left out, ...)."""
        self._hide_data_notes()
        skipped = getattr(self.dataset, "skipped_files", None) or []
        if skipped:
            self.skipped_label.setText(f"<span style='color:{theme.error_text}'>{len(skipped)} file(s) could not "
                                       "be read and were skipped:</span>")
            self.skipped_label.setToolTip("The files below are left out of every split; fix or remove them and "
                                          "load again.")
            self.skipped_list.setPlainText("\n".join(f"{self._short_path(path)}: {reason}"
                                                     for path, reason in skipped))
            lines = min(6, 2 * len(skipped))  # a reason usually wraps once
            self.skipped_list.setFixedHeight(self.skipped_list.fontMetrics().lineSpacing() * lines + 12)
            self.skipped_label.show()
            self.skipped_list.show()
        warnings = getattr(self.dataset, "warnings", None) or []
        if warnings:
            self.data_warnings_label.setText("<br>".join(f"<span style='color:{theme.error_text}'>Warning:</span> "
                                                         f"{html.escape(text, quote=False)}" for text in warnings))
            self.data_warnings_label.show()

    def show_episode_problem(self, message: str | None) -> None:
        """Flag an impossible n-way / k-shot / q-query setting next to the fields (None clears it)."""
        self.episode_problem_text = message
        if message:
            color = self.theme.error_text
            self.episode_problem.setText(f"<span style='color:{color}'>⚠ {html.escape(message)}</span>")
            self.episode_problem.show()
        else:
            self.episode_problem.clear()
            self.episode_problem.hide()

    def resample(self, new_seed: bool = True) -> None:
        """Draw a new episode from meta-train for the preview."""
        if new_seed:
            self._preview_seed = random.randrange(2**31)
        if not self.is_ready() or not self.has_episodes():
            self.grid.set_message("No episode yet: the dataset is not loaded.")
            self.preview_caption.clear()
            return
        values = self.episode_form.values()
        split = self.dataset.splits["train"]
        try:
            sampler = EpisodeSampler(split, self.dataset.spec, values["ways"], values["shots"], values["queries"],
                                     seed=self._preview_seed, split_name="train", dataset_name=self.dataset.name,
                                     **episode_options(self.values()))
        except (EpisodeError, ConfigError):
            self.grid.set_message("No episode can be drawn with this setting; see the message under Episodes.")
            self.preview_caption.clear()
            return
        class_ids, support_index, query_index = sampler.sample_indices()
        ways, shots, queries = len(class_ids), values["shots"], values["queries"]
        images = split.images
        shown_ways = min(ways, MAX_SHOWN_WAYS)
        shown_queries = min(queries, MAX_SHOWN_QUERIES)
        support_rows, query_rows = [], []
        for w in range(shown_ways):
            support_rows.append([images[int(i)].numpy() for i in support_index[w * shots:(w + 1) * shots]])
            query_rows.append([images[int(i)].numpy() for i in query_index[w * queries:w * queries + shown_queries]])
        names = [split.class_names[c] for c in class_ids[:shown_ways]]
        self.grid.set_episode(names, support_rows, query_rows, ways - shown_ways, queries - shown_queries)
        self.preview_caption.setText(
            f"{ways}-way {shots}-shot episode from meta-train with {queries} queries per class. "
            f"<span style='color:{self.theme.support}'>Support</span> images are labelled; the model must "
            f"classify the <span style='color:{self.theme.query}'>queries</span>.")
