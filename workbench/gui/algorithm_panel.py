"""The algorithm panel: algorithms grouped by family with their description, a hyperparameter form generated
from ``Algorithm.hparam_specs()``, the device, and the training and evaluation settings (forms generated from
``config_fields()``). Nothing here knows a particular algorithm.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QComboBox, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QVBoxLayout, QWidget)

from workbench.core.algorithms import algorithms_by_family, get_algorithm
from workbench.core.config import config_fields
from workbench.core.device import detect_devices
from workbench.gui.hparam_form import HParamForm

DEFAULT_ALGORITHM = "protonet"


class AlgorithmCombo(QComboBox):
    """Algorithms under non-selectable family headings."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        model = QStandardItemModel(self)
        for family, classes in algorithms_by_family().items():
            if not classes:
                continue
            header = QStandardItem(family.title)
            header.setFlags(Qt.ItemFlag.NoItemFlags)
            font = QFont(self.font())
            font.setBold(True)
            header.setFont(font)
            model.appendRow(header)
            for cls in classes:
                item = QStandardItem(f"    {cls.title}")
                item.setData(cls.name, Qt.ItemDataRole.UserRole)
                item.setToolTip(cls.summary)
                model.appendRow(item)
        self.setModel(model)

    def names(self) -> list[str]:
        return [self.itemData(i) for i in range(self.count()) if self.itemData(i)]

    def set_name(self, name: str) -> bool:
        index = self.findData(name)
        if index < 0:
            return False
        self.setCurrentIndex(index)
        return True


def device_choices() -> list[tuple[str, str, str]]:
    """(config value, label, tooltip) for the device box, from what torch detects here."""
    devices = detect_devices()
    best = devices[0]
    choices = [("auto", f"Automatic: {best.label}", "Picks CUDA, then Apple MPS, then the CPU.")]
    cuda = [d for d in devices if d.kind.startswith("cuda")]
    if cuda:
        tip = "\n".join(f"{d.kind}: {d.label}" for d in cuda)
        label = cuda[0].label + (f" (+{len(cuda) - 1} more)" if len(cuda) > 1 else "")
        choices.append(("cuda", f"CUDA: {label}", tip))
    for d in devices:
        if d.kind == "mps":
            choices.append(("mps", d.label, "Apple Metal Performance Shaders"))
        elif d.kind == "cpu":
            choices.append(("cpu", f"CPU: {d.detail}", "Train on the CPU (one core stays free for the window)."))
    return choices


class AlgorithmPanel(QWidget):
    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._silent = False
        # Hyperparameters typed for one algorithm are kept when switching away and back.
        self._hparams_by_algorithm: dict[str, dict[str, Any]] = {}
        self._current_name: str | None = None
        self._build()
        self.algorithm_combo.set_name(DEFAULT_ALGORITHM) or self.algorithm_combo.setCurrentIndex(1)
        self._on_algorithm_changed()

    def _build(self) -> None:
        fields = config_fields()
        self.algorithm_combo = AlgorithmCombo()
        self.algorithm_combo.setObjectName("algorithmName")
        self.family_label = QLabel()
        self.family_label.setObjectName("algorithmFamily")
        self.description = QLabel()
        self.description.setObjectName("algorithmDescription")
        self.description.setWordWrap(True)
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hparam_form = HParamForm()
        self.hparam_form.setObjectName("algorithmHParams")
        self.no_hparams = QLabel("This algorithm has no hyperparameters.")
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.setObjectName("resetHParams")
        self.reset_button.setToolTip("Restore this algorithm's default hyperparameters")

        algo_box = QGroupBox("Algorithm")
        algo_layout = QVBoxLayout(algo_box)
        algo_layout.addWidget(self.algorithm_combo)
        algo_layout.addWidget(self.family_label)
        algo_layout.addWidget(self.description)
        hp_title = QLabel("<b>Hyperparameters</b>")
        algo_layout.addWidget(hp_title)
        algo_layout.addWidget(self.hparam_form)
        algo_layout.addWidget(self.no_hparams)
        reset_row = QHBoxLayout()
        reset_row.addStretch(1)
        reset_row.addWidget(self.reset_button)
        algo_layout.addLayout(reset_row)

        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("runName")
        self.name_edit.setPlaceholderText("optional; a name is generated")
        self.name_edit.setToolTip("A name for the run in the Runs tab")
        self.device_combo = QComboBox()
        self.device_combo.setObjectName("device")
        for value, label, tip in device_choices():
            self.device_combo.addItem(label, value)
            self.device_combo.setItemData(self.device_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.device_combo.setToolTip(next(s.help for s in fields["training"] if s.name == "device"))
        self.training_form = HParamForm(fields["training"], exclude=("device",))
        self.training_form.setObjectName("trainingForm")
        self.training_reset = QPushButton("Reset to defaults")
        self.training_reset.setObjectName("resetTraining")

        training_box = QGroupBox("Training")
        training_layout = QVBoxLayout(training_box)
        self.training_form.insert_row(0, "Run name", self.name_edit)
        self.training_form.insert_row(1, "Device", self.device_combo)
        training_layout.addWidget(self.training_form)
        reset_row2 = QHBoxLayout()
        reset_row2.addStretch(1)
        reset_row2.addWidget(self.training_reset)
        training_layout.addLayout(reset_row2)

        self.evaluation_form = HParamForm(fields["evaluation"])
        self.evaluation_form.setObjectName("evaluationForm")
        for name, title in (("episodes", "Test episodes"), ("seed", "Test seed")):
            if name in self.evaluation_form.names():
                self.evaluation_form.label(name).setText(title)
        evaluation_box = QGroupBox("Evaluation")
        QVBoxLayout(evaluation_box).addWidget(self.evaluation_form)

        layout = QVBoxLayout(self)
        layout.addWidget(algo_box)
        layout.addWidget(training_box)
        layout.addWidget(evaluation_box)
        layout.addStretch(1)

        self.algorithm_combo.currentIndexChanged.connect(lambda _: self._on_algorithm_changed())
        self.hparam_form.changed.connect(self._emit_changed)
        self.training_form.changed.connect(self._emit_changed)
        self.evaluation_form.changed.connect(self._emit_changed)
        self.device_combo.currentIndexChanged.connect(self._emit_changed)
        self.name_edit.textChanged.connect(self._emit_changed)
        self.reset_button.clicked.connect(self.hparam_form.reset_defaults)
        self.training_reset.clicked.connect(self._reset_training)

    def _emit_changed(self, *_) -> None:
        if not self._silent:
            self.changed.emit()

    def _reset_training(self) -> None:
        self.training_form.reset_defaults()
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData("auto")))

    def _on_algorithm_changed(self) -> None:
        name = self.algorithm_name()
        if name is None:
            return
        if self._current_name is not None:
            self._hparams_by_algorithm[self._current_name] = self.hparam_form.values()
        cls = get_algorithm(name)
        self._current_name = name
        self.family_label.setText(f"<i>{cls.family.title}</i> — {cls.summary}")
        self.description.setText(cls.description)
        self.hparam_form.set_specs(cls.hparam_specs())
        saved = self._hparams_by_algorithm.get(name)
        if saved:
            self.hparam_form.set_values(saved)
        self.no_hparams.setVisible(self.hparam_form.is_empty())
        self.hparam_form.setVisible(not self.hparam_form.is_empty())
        self.reset_button.setEnabled(not self.hparam_form.is_empty())
        self._emit_changed()

    # --- values -----------------------------------------------------------------------------
    def algorithm_name(self) -> str | None:
        return self.algorithm_combo.currentData()

    def hparams(self) -> dict[str, Any]:
        return self.hparam_form.values()

    def run_name(self) -> str:
        return self.name_edit.text().strip()

    def training_values(self) -> dict[str, Any]:
        values = self.training_form.values()
        values["device"] = self.device_combo.currentData()
        return values

    def evaluation_values(self) -> dict[str, Any]:
        return self.evaluation_form.values()

    def set_config(self, config) -> None:
        """Fill every field from an ExperimentConfig."""
        self._silent = True
        try:
            if not self.algorithm_combo.set_name(config.algorithm.name):
                raise ValueError(f"unknown algorithm {config.algorithm.name!r}")
            self._on_algorithm_changed()
            self.hparam_form.reset_defaults()
            self.hparam_form.set_values(config.algorithm.hparams)
            self.name_edit.setText(config.name)
            training = {spec.name: getattr(config.training, spec.name) for spec in self.training_form.specs()}
            self.training_form.set_values(training)
            index = self.device_combo.findData(config.training.device)
            if index < 0:  # a config from a machine with a device this one lacks
                self.device_combo.addItem(f"{config.training.device} (not detected here)", config.training.device)
                index = self.device_combo.count() - 1
            self.device_combo.setCurrentIndex(index)
            evaluation = {spec.name: getattr(config.evaluation, spec.name) for spec in self.evaluation_form.specs()}
            self.evaluation_form.set_values(evaluation)
        finally:
            self._silent = False
        self.changed.emit()
