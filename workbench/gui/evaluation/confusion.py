"""The confusion matrix of one classification result, and the queries of a clicked cell shown with the support
images of their episode (rebuilt from the fixed episodes, off the GUI thread)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QHeaderView, QLabel, QScrollArea, QSplitter,
                               QTableWidget, QVBoxLayout, QWidget)

from workbench.gui import theme as themes
from workbench.gui.background import BackgroundTask
from workbench.gui.evaluation.results import ResultData, most_confused, tested_on
from workbench.gui.evaluation.widgets import heat, short, table_item, thumb

# A clicked cell shows at most this many queries (each with its support images).
EXAMPLES_MAX = 12


def tasks_key(run) -> str:
    """What decides a run's test tasks apart from the evaluation settings: its kind, the kind's options and the
    dataset (not the episode setting, nor training-only augmentation)."""
    config = run.config.to_dict()
    section = {k: v for k, v in config["dataset"].items()
               if k not in ("ways", "shots", "queries", "rotations", "download")}
    return json.dumps({"kind": config.get("kind"), "task": config.get("task"), "dataset": section},
                      sort_keys=True, default=str)


def data_key(run, result) -> str:
    """tasks_key of the data a result was tested on: the run's own, or another dataset it names."""
    other = tested_on(result.to_dict()) if result is not None else None
    key = tasks_key(run)
    return key if other is None else json.dumps([key, other["dataset"], other.get("root", "")])


def _test_data(run, result, progress):
    """The dataset ``result`` was tested on (another one is loaded as the evaluation read it)."""
    from workbench.core import data
    from workbench.core.evaluation import evaluation_dataset_config

    other = tested_on(result.to_dict())
    config = run.config
    if other is not None:
        config = evaluation_dataset_config(config, other["dataset"], other.get("root") or None,
                                           config.dataset.image_size or None)
    return data.load_dataset(config.dataset, progress)


def _numpy(tensor) -> np.ndarray:
    return tensor.cpu().numpy() if hasattr(tensor, "cpu") else np.asarray(tensor)


def gather_examples(progress, run, result, true_name: str, pred_name: str, dataset=None,
                    limit: int = EXAMPLES_MAX) -> dict[str, Any]:
    """The queries of ``result`` with this true and predicted class, each with its episode's support images of
    both classes (uint8 CHW arrays). Rebuilds the fixed episodes; runs in a worker thread."""
    from workbench.core import data

    if dataset is None:
        dataset = _test_data(run, result, progress)
    split = dataset.split("test")
    names = list(split.class_names)
    if true_name not in names or pred_name not in names:
        raise ValueError(f"class '{true_name}' or '{pred_name}' is not in the test split of {dataset.name}")
    true_id, pred_id = names.index(true_name), names.index(pred_name)
    records = result.query_records
    chosen = np.flatnonzero((records["true"] == true_id) & (records["pred"] == pred_id))
    fixed = data.FixedEpisodes(split, dataset.spec, result.ways, result.shots, result.queries, result.episodes,
                               result.seed, split_name="test", dataset_name=dataset.name,
                               domains=getattr(result, "domains", "any"))
    labels = _numpy(split.labels)
    examples = []
    for n, i in enumerate(chosen[:limit]):
        episode_index, row = int(records["episode"][i]), int(records["row"][i])
        support_rows = _numpy(fixed[episode_index].support_index)
        examples.append({
            "episode": episode_index, "query": int(records["query"][i]), "row": row,
            "true": true_name, "pred": pred_name,
            "confidence": float(records["confidence"][i]) if "confidence" in records else float("nan"),
            "query_image": split.images[row].cpu().numpy() if row >= 0 else None,
            "true_support": [split.images[int(r)].cpu().numpy() for r in support_rows if labels[r] == true_id],
            "pred_support": [split.images[int(r)].cpu().numpy() for r in support_rows if labels[r] == pred_id],
        })
        progress(n + 1, min(len(chosen), limit), "gathering images")
    return {"true": true_name, "pred": pred_name, "total": len(chosen), "examples": examples, "dataset": dataset,
            "data_key": data_key(run, result)}


class ConfusionPage(QSplitter):
    """The matrix on top, the images of the clicked cell below."""

    title = "Confusion"
    examples_shown = Signal(object)  # the dict from gather_examples

    def __init__(self, store, theme: themes.Theme, parent: QWidget | None = None):
        super().__init__(Qt.Orientation.Vertical, parent)
        self.store = store
        self.theme = theme
        self.result = None
        self.run_id: str | None = None
        self.indexes = np.zeros(0, np.int64)  # the confusion classes shown, in table order
        self.examples: dict[str, Any] | None = None
        self._datasets: dict[str, Any] = {}  # tasks_key -> loaded dataset, for the example images
        self.examples_task = BackgroundTask(self, finished=self._on_examples,
                                            failed=lambda message, _details: self.examples_title.setText(message))
        self._build()

    @staticmethod
    def accepts(data: ResultData) -> bool:
        return bool(data.data.get("confusion_classes"))

    def _build(self) -> None:
        self.table = QTableWidget()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellClicked.connect(self.open_cell)
        for header in (self.table.horizontalHeader(), self.table.verticalHeader()):
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.note = QLabel("")
        self.note.setWordWrap(True)  # a long note must wrap, not widen the whole Evaluation tab
        top = QWidget()
        top_layout = QVBoxLayout(top)
        top_layout.setContentsMargins(0, 0, 0, 0)
        top_layout.addWidget(self.note)
        top_layout.addWidget(self.table, 1)
        self.addWidget(top)
        bottom = QWidget()
        bottom_layout = QVBoxLayout(bottom)
        bottom_layout.setContentsMargins(0, 0, 0, 0)
        self.examples_title = QLabel("Click a cell (row: true class, column: predicted class) to see its queries.")
        self.examples_title.setWordWrap(True)
        bottom_layout.addWidget(self.examples_title)
        area = QScrollArea()
        area.setWidgetResizable(True)
        holder = QWidget()
        self.examples_grid = QGridLayout(holder)
        area.setWidget(holder)
        bottom_layout.addWidget(area, 1)
        self.addWidget(bottom)
        self.setSizes([420, 300])

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        if self.result is not None:
            self._fill()  # recolour; the example images stay

    # --- the matrix -----------------------------------------------------------------------------------
    def show_result(self, data: ResultData, run_id: str | None) -> None:
        self.result, self.run_id = data.result, run_id
        self._fill()
        self.clear_examples()

    def _fill(self) -> None:
        confusion = np.asarray(self.result.confusion)
        self.indexes = most_confused(confusion)
        names = [self.result.confusion_classes[i] for i in self.indexes]
        table = self.table
        table.clear()
        table.setRowCount(len(names))
        table.setColumnCount(len(names))
        # Numbered columns keep the matrix narrow; the row headers carry the names.
        table.setHorizontalHeaderLabels([str(k + 1) for k in range(len(names))])
        table.setVerticalHeaderLabels([f"{k + 1}  {short(n, 28)}" for k, n in enumerate(names)])
        for k, name in enumerate(names):
            table.horizontalHeaderItem(k).setToolTip(f"predicted: {name}")
            table.verticalHeaderItem(k).setToolTip(f"true: {name}")
        sub = confusion[np.ix_(self.indexes, self.indexes)] if len(names) else confusion
        rows = confusion[self.indexes].sum(1) if len(names) else np.zeros(0)
        for r in range(len(names)):
            for c in range(len(names)):
                share = sub[r, c] / rows[r] if rows[r] else 0.0
                table.setItem(r, c, self._cell(int(sub[r, c]), share, names[r], names[c], error=r != c))
        shown, total = len(names), confusion.shape[0]
        self.note.setText("Rows: true class, columns: predicted class; colour: share of the row's queries. "
                          + (f"Showing the {shown} of {total} classes with the most errors." if shown < total else
                             f"{total} classes."))

    def _cell(self, count: int, share: float, true_name: str, pred_name: str, error: bool):
        item = table_item(str(count) if count else "", f"true {true_name} → predicted {pred_name}: {count} "
                          f"({100 * share:.1f}% of its queries)")
        item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        dark = self.theme.is_dark
        colour = heat(share, dark)
        if error and count:  # errors lean red
            colour = QColor(min(255, colour.red() + (120 if dark else 90)), colour.green(), colour.blue())
        item.setBackground(QBrush(colour))
        item.setForeground(QBrush(QColor("white" if share > 0.55 else self.theme.plot_foreground)))
        return item

    def cell_classes(self, row: int, column: int) -> tuple[str, str]:
        names = self.result.confusion_classes
        return names[int(self.indexes[row])], names[int(self.indexes[column])]

    # --- the images of a cell -------------------------------------------------------------------------
    def open_cell(self, row: int, column: int) -> None:
        """Show the queries of true class ``row`` predicted as ``column`` with their support images."""
        if self.result is None or self.run_id is None:
            return
        if not self.result.query_records:
            self.examples_title.setText("This saved result has no per-query records (its .npz file is missing).")
            return
        true_name, pred_name = self.cell_classes(row, column)
        self.examples_title.setText(f"Loading the queries of '{true_name}' predicted as '{pred_name}'…")
        run = self.store.get(self.run_id)
        self.examples_task.start(gather_examples, run, self.result, true_name, pred_name,
                                 self._datasets.get(data_key(run, self.result)))

    def clear_examples(self) -> None:
        while self.examples_grid.count():
            widget = self.examples_grid.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.examples = None

    def _on_examples(self, found: dict[str, Any]) -> None:
        self._datasets[found["data_key"]] = found["dataset"]
        self.clear_examples()
        self.examples = found
        kind = "correctly classified" if found["true"] == found["pred"] else "misclassified"
        shown = len(found["examples"])
        self.examples_title.setText(
            f"{found['total']} {kind} queries of '{found['true']}' predicted as '{found['pred']}'"
            + (f" (first {shown} shown)" if shown < found["total"] else "")
            + ". Per row: query (orange), support of the true class (blue), of the predicted class (red).")
        for r, example in enumerate(found["examples"]):
            self._add_example_row(r, example)
        self.examples_grid.setColumnStretch(self.examples_grid.columnCount(), 1)
        self.examples_grid.setRowStretch(len(found["examples"]), 1)
        self.examples_shown.emit(found)

    def _add_example_row(self, r: int, example: dict[str, Any]) -> None:
        grid, t = self.examples_grid, self.theme
        caption = QLabel(f"episode {example['episode']}\nquery {example['query']}\np={example['confidence']:.2f}")
        caption.setStyleSheet(f"color: {t.muted_text};")
        caption.setMinimumSize(caption.sizeHint())
        grid.addWidget(caption, r, 0)
        if example["query_image"] is not None:
            grid.addWidget(thumb(example["query_image"], t.query,
                                 f"query: true {example['true']}, predicted {example['pred']}"), r, 1)
        column = 2
        images = [(image, t.support, f"support of the true class {example['true']}")
                  for image in example["true_support"]]
        if example["pred"] != example["true"]:
            images += [(image, t.error_text, f"support of the predicted class {example['pred']}")
                       for image in example["pred_support"]]
        for image, colour, tip in images:
            grid.addWidget(thumb(image, colour, tip), r, column)
            column += 1

    def shutdown(self) -> bool:
        return self.examples_task.shutdown()
