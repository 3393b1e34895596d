"""The algorithm panel: the algorithms that support the chosen experiment kind, grouped by family with their
description, a hyperparameter form generated from ``Algorithm.hparam_specs()``, the device, and the training and
evaluation settings (forms generated from ``config_fields()``). Nothing here knows a particular algorithm: a kind
names its default one (``default_algorithm``).
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (QComboBox, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSpinBox,
                               QVBoxLayout, QWidget)

from workbench.core.algorithms import algorithms_by_family, get_algorithm
from workbench.core.config import config_fields
from workbench.core.device import detect_devices, resolve_device
from workbench.core.errors import ConfigError
from workbench.core.kinds import DEFAULT_KIND, get_kind_class
from workbench.core.precision import choices_for, detect_hardware
from workbench.core.recipes import Recipe, recipes_for
from workbench.gui.hparam_form import HParamForm, narrow_combo, tooltip

# Dataset fields whose training override ("train_ways", ...) means something only when the kind has the field.
EPISODE_FIELDS = ("ways", "shots", "queries")
PROCESSES_TIP = ("Train in this many processes at once (a launch setting, not part of the experiment): each takes "
                 "its share of every meta-batch and their gradients are averaged, so the steps are the same as one "
                 "process with the whole meta-batch. The meta-batch must divide by the processes. At most the CPU "
                 "cores, or the GPUs when training on CUDA (one each). Pause is not available while several "
                 "processes train; Stop saves the run.")


class AlgorithmCombo(QComboBox):
    """Algorithms under non-selectable family headings; only those supporting ``kind`` when given."""

    def __init__(self, parent: QWidget | None = None, kind: str | None = None):
        super().__init__(parent)
        self.set_kind(kind)

    def set_kind(self, kind: str | None) -> None:
        """List the algorithms of ``kind`` (no signal; the caller picks one)."""
        self.blockSignals(True)
        model = QStandardItemModel(self)
        for family, classes in algorithms_by_family(kind).items():
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
        self.setModel(model)  # the combo deletes the model it owned before
        self.blockSignals(False)

    def names(self) -> list[str]:
        return [self.itemData(i) for i in range(self.count()) if self.itemData(i)]

    def set_name(self, name: str) -> bool:
        index = self.findData(name)
        if index < 0:
            return False
        self.setCurrentIndex(index)
        return True

    def select_first(self) -> bool:
        names = self.names()
        return self.set_name(names[0]) if names else False


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


def precision_device(choice: str | None):
    """The torch device a device-box value trains on; the CPU for a device this machine lacks."""
    try:
        return resolve_device(choice or "auto")
    except ConfigError:
        return resolve_device("cpu")


class AlgorithmPanel(QWidget):
    changed = Signal()
    processes_changed = Signal(int)  # the launch setting (not part of the config)
    # A recipe the user picked (or the recommended one of a newly chosen algorithm): this panel fills its own
    # fields; the window fills the dataset and kind fields the recipe sets.
    recipe_applied = Signal(object)

    def __init__(self, parent: QWidget | None = None, kind: str = DEFAULT_KIND):
        super().__init__(parent)
        self._silent = False
        self._recipe_changes: list[str] = []
        # Hyperparameters typed for one algorithm are kept when switching away and back.
        self._hparams_by_algorithm: dict[str, dict[str, Any]] = {}
        self._current_name: str | None = None
        self.kind = kind
        self.dataset = get_kind_class(kind).default_dataset  # recipes fit a kind and a dataset
        self._build()
        self.set_kind(kind)

    def _build(self) -> None:
        fields = config_fields()
        algo_box = self._build_algorithm_box()
        training_box = self._build_training_box(fields)
        evaluation_box = self._build_evaluation_box(fields)

        layout = QVBoxLayout(self)
        layout.addWidget(algo_box)
        layout.addWidget(training_box)
        layout.addWidget(evaluation_box)
        layout.addStretch(1)
        self._connect_signals()

    def _build_algorithm_box(self) -> QGroupBox:
        """Algorithm choice, description, recipe and hyperparameter form."""
        self.algorithm_combo = narrow_combo(AlgorithmCombo(kind=self.kind), 16)
        self.algorithm_combo.setObjectName("algorithmName")
        self.family_label = QLabel()
        self.family_label.setObjectName("algorithmFamily")
        self.family_label.setWordWrap(True)  # long summaries would widen the dock past the screen
        self.description = QLabel()
        self.description.setObjectName("algorithmDescription")
        self.description.setWordWrap(True)
        self.description.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hparam_form = HParamForm()
        self.hparam_form.setObjectName("algorithmHParams")
        self.no_hparams = QLabel("This algorithm has no hyperparameters.")
        self.hp_title = QLabel("<b>Hyperparameters</b>")
        self.recipe_combo = narrow_combo(QComboBox())
        self.recipe_combo.setObjectName("algorithmRecipe")
        self.recipe_combo.setToolTip("A complete training setup the algorithm declares for this kind and dataset; "
                                     "choosing one fills the fields it sets (edit them freely afterwards)")
        self.recipe_help = QLabel()
        self.recipe_help.setObjectName("recipeHelp")
        self.recipe_help.setWordWrap(True)
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.setObjectName("resetHParams")
        self.reset_button.setToolTip("Restore this algorithm's default hyperparameters")

        algo_box = QGroupBox("Algorithm")
        algo_layout = QVBoxLayout(algo_box)
        algo_layout.addWidget(self.algorithm_combo)
        algo_layout.addWidget(self.family_label)
        algo_layout.addWidget(self.description)
        recipe_row = QHBoxLayout()
        recipe_row.addWidget(QLabel("Recipe"))
        recipe_row.addWidget(self.recipe_combo, 1)
        algo_layout.addLayout(recipe_row)
        algo_layout.addWidget(self.recipe_help)
        algo_layout.addWidget(self.hp_title)
        algo_layout.addWidget(self.hparam_form)
        algo_layout.addWidget(self.no_hparams)
        reset_row = QHBoxLayout()
        reset_row.addStretch(1)
        reset_row.addWidget(self.reset_button)
        algo_layout.addLayout(reset_row)
        return algo_box

    def _build_training_box(self, fields: dict[str, list]) -> QGroupBox:
        """Run name, device and the training settings."""
        self.name_edit = QLineEdit()
        self.name_edit.setObjectName("runName")
        self.name_edit.setPlaceholderText("optional; a name is generated")
        self.name_edit.setToolTip("A name for the run in the Runs tab")
        # Long device names are elided rather than widening the panel (the full text is in the list).
        self.device_combo = narrow_combo(QComboBox(), 16)
        self.device_combo.setObjectName("device")
        for value, label, tip in device_choices():
            self.device_combo.addItem(label, value)
            self.device_combo.setItemData(self.device_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.device_combo.setToolTip(next(s.help for s in fields["training"] if s.name == "device"))
        self.precision_combo = narrow_combo(QComboBox(), 16)
        self.precision_combo.setObjectName("precision")
        self.precision_combo.setToolTip(next(s.help for s in fields["training"] if s.name == "precision"))
        self.hardware_label = QLabel()
        self.hardware_label.setObjectName("precisionHardware")
        self.hardware_label.setWordWrap(True)
        self.processes_spin = QSpinBox()
        self.processes_spin.setObjectName("processes")
        self.processes_spin.setRange(1, 1)
        self.processes_spin.setToolTip(PROCESSES_TIP)
        self._update_process_limit()
        self.training_form = HParamForm(fields["training"], exclude=("device", "precision"))
        self.training_form.setObjectName("trainingForm")
        self.training_reset = QPushButton("Reset to defaults")
        self.training_reset.setObjectName("resetTraining")

        training_box = QGroupBox("Training")
        training_layout = QVBoxLayout(training_box)
        self.training_form.insert_row(0, "Run name", self.name_edit)
        self.training_form.insert_row(1, "Device", self.device_combo)
        self.training_form.insert_row(2, "Precision", self.precision_combo)
        self.training_form.insert_row(3, "", self.hardware_label)
        self.training_form.insert_row(4, "Processes", self.processes_spin)
        training_layout.addWidget(self.training_form)
        reset_row2 = QHBoxLayout()
        reset_row2.addStretch(1)
        reset_row2.addWidget(self.training_reset)
        training_layout.addLayout(reset_row2)
        return training_box

    def _build_evaluation_box(self, fields: dict[str, list]) -> QGroupBox:
        self.evaluation_form = HParamForm(fields["evaluation"])
        self.evaluation_form.setObjectName("evaluationForm")
        if "seed" in self.evaluation_form.names():
            self.evaluation_form.label("seed").setText("Test seed")
        evaluation_box = QGroupBox("Evaluation")
        QVBoxLayout(evaluation_box).addWidget(self.evaluation_form)
        return evaluation_box

    def _connect_signals(self) -> None:
        self.algorithm_combo.currentIndexChanged.connect(lambda _: self._on_algorithm_changed())
        self.recipe_combo.activated.connect(lambda _: self._on_recipe_picked())
        self.hparam_form.changed.connect(self._emit_changed)
        self.training_form.changed.connect(self._emit_changed)
        self.evaluation_form.changed.connect(self._emit_changed)
        self.device_combo.currentIndexChanged.connect(self._emit_changed)
        self.device_combo.currentIndexChanged.connect(lambda _: self._update_process_limit())
        self.device_combo.currentIndexChanged.connect(lambda _: self._update_precision_choices())
        self.precision_combo.currentIndexChanged.connect(self._emit_changed)
        self.precision_combo.currentIndexChanged.connect(lambda _: self._show_precision())
        self.processes_spin.valueChanged.connect(self.processes_changed)
        self.processes_spin.valueChanged.connect(self._emit_changed)
        self.name_edit.textChanged.connect(self._emit_changed)
        self.reset_button.clicked.connect(self.hparam_form.reset_defaults)
        self.training_reset.clicked.connect(self._reset_training)

    def _emit_changed(self, *_) -> None:
        if not self._silent:
            self.changed.emit()

    def _update_process_limit(self) -> None:
        """Up to one process per GPU on CUDA, per core on the CPU; one elsewhere (MPS)."""
        devices = detect_devices()
        device = self.device_combo.currentData() or "auto"
        kind = devices[0].kind if device == "auto" else device
        if kind.startswith("cuda"):
            limit = sum(d.kind.startswith("cuda") for d in devices)
        else:
            limit = (os.cpu_count() or 1) if kind == "cpu" else 1
        self.processes_spin.setMaximum(max(1, limit))

    def _update_precision_choices(self) -> None:
        """The precision box, resolved for the chosen device and algorithm (what "auto" picks and why, which
        formats the hardware lacks), keeping the chosen value."""
        chosen = self.precision_combo.currentData() or "auto"
        name = self.algorithm_name()
        allows = bool(name) and get_algorithm(name).auto_reduced_precision
        device = precision_device(self.device_combo.currentData())
        self.precision_combo.blockSignals(True)
        self.precision_combo.clear()
        for value, label, tip in choices_for(device, allows):
            self.precision_combo.addItem(label, value)
            self.precision_combo.setItemData(self.precision_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(chosen)))
        self.precision_combo.blockSignals(False)
        self._show_precision()

    def _show_precision(self) -> None:
        """The detected hardware under the box, and why the chosen precision resolves as it does."""
        hardware = detect_hardware(precision_device(self.device_combo.currentData()))
        reason = self.precision_combo.itemData(self.precision_combo.currentIndex(), Qt.ItemDataRole.ToolTipRole)
        self.hardware_label.setText(f"<small>Detected {hardware.summary}.<br>{reason or ''}</small>")

    def processes(self) -> int:
        """How many processes train a run (a launch setting, kept in the app's settings, not in the config)."""
        return self.processes_spin.value()

    def set_processes(self, count: int) -> None:
        self.processes_spin.setValue(count)  # clamped to this machine's limit

    def _reset_training(self) -> None:
        self.training_form.reset_defaults()
        self.device_combo.setCurrentIndex(max(0, self.device_combo.findData("auto")))
        self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData("auto")))

    def set_kind(self, kind: str, dataset: str | None = None) -> None:
        """Offer the algorithms of ``kind`` and pick its default one (or keep the chosen one if it fits);
        ``dataset``: the dataset chosen for the kind (its default when None), which recipes must fit."""
        kind_cls = get_kind_class(kind)
        self.dataset = dataset or kind_cls.default_dataset
        previous = self._current_name if kind == self.kind else None
        if kind != self.kind:  # another kind's training setup (its recipe's steps, batches) rarely fits
            self.training_form.reset_defaults()
            self.evaluation_form.reset_defaults()
        self.kind = kind
        self.algorithm_combo.set_kind(kind)
        self.algorithm_combo.blockSignals(True)  # one _on_algorithm_changed below, not one per index change
        for name in (previous, kind_cls.default_algorithm):
            if name and self.algorithm_combo.set_name(name):
                break
        else:
            self.algorithm_combo.select_first()
        self.algorithm_combo.blockSignals(False)
        has_ways = "ways" in kind_cls.dataset_fields
        for field in EPISODE_FIELDS:  # "train_shots" and the like mean nothing to a kind without the field
            self.training_form.set_row_visible(f"train_{field}", field in kind_cls.dataset_fields)
        if "episodes" in self.evaluation_form.names():
            self.evaluation_form.label("episodes").setText("Test episodes" if has_ways else "Test tasks")
        self._on_algorithm_changed()

    def _grey_unused_training_fields(self, cls) -> None:
        """Training settings the algorithm declares it ignores are greyed, saying so (their values are kept)."""
        unused = set(cls.unused_training_fields)
        for name in self.training_form.names():
            editor, label = self.training_form.editor(name), self.training_form.label(name)
            ignored = name in unused
            editor.setEnabled(not ignored)
            label.setEnabled(not ignored)
            note = f"{cls.title} does not use this setting." if ignored else ""
            spec = next(s for s in self.training_form.specs() if s.name == name)
            editor.setToolTip(f"{note}\n{tooltip(spec)}" if note else tooltip(spec))
            label.setToolTip(editor.toolTip())

    def _on_algorithm_changed(self) -> None:
        name = self.algorithm_name()
        if self._current_name is not None:
            self._hparams_by_algorithm[self._current_name] = self.hparam_form.values()
        if name is None:
            self._show_no_algorithm()
            return
        cls = get_algorithm(name)
        self._current_name = name
        self.family_label.setText(f"<i>{cls.family.title}</i> — {cls.summary}")
        self.description.setText(cls.description)
        self.hparam_form.set_specs(cls.hparam_specs())
        saved = self._hparams_by_algorithm.get(name)
        if saved:
            self.hparam_form.set_values(saved)
        self.algorithm_combo.setEnabled(True)
        self.hp_title.show()
        self.no_hparams.setVisible(self.hparam_form.is_empty())
        self.hparam_form.setVisible(not self.hparam_form.is_empty())
        self.reset_button.setEnabled(not self.hparam_form.is_empty())
        self._grey_unused_training_fields(cls)
        self._update_precision_choices()  # what "auto" picks depends on the algorithm
        self._show_recipes(apply=not self._silent)  # a newly chosen algorithm starts from its recommended setup
        self._emit_changed()

    # --- recipes --------------------------------------------------------------------------------
    def set_dataset(self, name: str) -> None:
        """The dataset changed: offer the recipes that fit it (keeping the chosen one if it still fits)."""
        if name and name != self.dataset:
            self.dataset = name
            self._show_recipes(apply=False)
            self._emit_changed()

    def _recipes(self) -> list[Recipe]:
        name = self.algorithm_name()
        return recipes_for(get_algorithm(name), self.kind, self.dataset) if name else []

    def _show_recipes(self, apply: bool) -> None:
        """List the algorithm's recipes for the kind and dataset, the recommended one first, then "none"."""
        kept = self.recipe_combo.currentData() if not apply else None
        recipes = self._recipes()
        self.recipe_combo.blockSignals(True)
        self.recipe_combo.clear()
        for recipe in recipes:
            self.recipe_combo.addItem(recipe.name + (" (recommended)" if recipe.recommended else ""), recipe.name)
            self.recipe_combo.setItemData(self.recipe_combo.count() - 1, recipe.help, Qt.ItemDataRole.ToolTipRole)
        self.recipe_combo.addItem("none: the declared defaults", "")
        index = self.recipe_combo.findData(kept) if kept is not None else -1
        self.recipe_combo.setCurrentIndex(index if index >= 0 else 0)
        self.recipe_combo.blockSignals(False)
        self._show_recipe_help()
        if apply and recipes:
            self.apply_recipe(recipes[0])

    def _show_recipe_help(self) -> None:
        recipe = self.recipe()
        text = recipe.help if recipe is not None else "The algorithm's declared defaults, with the fields as you set them."
        if recipe is not None and self._recipe_changes:
            shown = ", ".join(self._recipe_changes[:4]) + (" …" if len(self._recipe_changes) > 4 else "")
            text = f"<b>Custom (from recipe {recipe.name})</b>: you changed {shown}. {text}"
        self.recipe_help.setText(text)
        self.recipe_help.setToolTip("\n".join(self._recipe_changes))

    def show_recipe_changes(self, changed: list[str]) -> None:
        """Mark the form "custom (from recipe X)" when fields depart from the chosen recipe (the window computes
        ``changed`` from the whole config, since a recipe also sets dataset fields)."""
        if changed != self._recipe_changes:
            self._recipe_changes = list(changed)
            self._show_recipe_help()

    def recipe_is_custom(self) -> bool:
        return bool(self._recipe_changes) and self.recipe() is not None

    def recipe_name(self) -> str:
        """The recipe the config names ("" for none)."""
        return self.recipe_combo.currentData() or ""

    def recipe(self) -> Recipe | None:
        return next((r for r in self._recipes() if r.name == self.recipe_name()), None)

    def set_recipe(self, name: str) -> None:
        """Name a recipe without applying it (a config whose fields already hold its values)."""
        index = self.recipe_combo.findData(name or "")
        self.recipe_combo.setCurrentIndex(index if index >= 0 else self.recipe_combo.count() - 1)
        self._show_recipe_help()

    def _on_recipe_picked(self) -> None:
        self._recipe_changes = []
        self._show_recipe_help()
        recipe = self.recipe()
        if recipe is not None:
            self.apply_recipe(recipe)
        self._emit_changed()

    def apply_recipe(self, recipe: Recipe) -> None:
        """Fill the fields the recipe sets: hyperparameters, training and evaluation here; the window fills the
        dataset and kind fields (``recipe_applied``)."""
        sections = recipe.sections()
        self.hparam_form.set_values(sections["hparams"])
        training = dict(sections["training"])
        device = training.pop("device", None)
        precision = training.pop("precision", None)
        self.training_form.set_values(training)
        if device is not None and self.device_combo.findData(device) >= 0:
            self.device_combo.setCurrentIndex(self.device_combo.findData(device))
        if precision is not None and self.precision_combo.findData(precision) >= 0:
            self.precision_combo.setCurrentIndex(self.precision_combo.findData(precision))
        self.evaluation_form.set_values(sections["evaluation"])
        self.recipe_applied.emit(recipe)

    def _show_no_algorithm(self) -> None:
        """A kind no installed algorithm supports: say so instead of showing another algorithm's form."""
        self._current_name = None
        self.algorithm_combo.setEnabled(False)
        title = get_kind_class(self.kind).title
        self.family_label.setText("<i>No algorithm</i>")
        self.description.setText(f"No installed algorithm supports {title[:1].lower() + title[1:]}. Algorithms "
                                 "declare the kinds they support; a plugin can add one (Help > Plugins).")
        self.hparam_form.set_specs([])
        for widget in (self.hp_title, self.no_hparams, self.hparam_form):
            widget.hide()
        self._show_recipes(apply=False)
        self.reset_button.setEnabled(False)
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
        values["precision"] = self.precision_combo.currentData() or "auto"
        return values

    def evaluation_values(self) -> dict[str, Any]:
        return self.evaluation_form.values()

    def set_config(self, config) -> None:
        """Fill every field from an ExperimentConfig."""
        self._silent = True
        try:
            self.dataset = config.dataset.name
            if config.kind != self.kind:
                self.set_kind(config.kind, config.dataset.name)
            if not self.algorithm_combo.set_name(config.algorithm.name):
                raise ValueError(f"algorithm {config.algorithm.name!r} is not installed or does not support "
                                 f"the {config.kind!r} kind")
            self._on_algorithm_changed()
            self.set_recipe(config.algorithm.recipe)
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
            self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(config.training.precision)))
            evaluation = {spec.name: getattr(config.evaluation, spec.name) for spec in self.evaluation_form.specs()}
            self.evaluation_form.set_values(evaluation)
        finally:
            self._silent = False
        self.changed.emit()
