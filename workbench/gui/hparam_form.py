"""A form generated from declared hyperparameters (HParamSpec): adding an algorithm needs no GUI code.

int -> QSpinBox, float -> FloatSpinBox (scientific text, log steps for log-scale values), bool -> QCheckBox,
choices -> QComboBox, str -> QLineEdit. Each row carries the help text and allowed range as its tooltip.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from PySide6.QtCore import Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QSpinBox,
                               QWidget)

from workbench.core.hparams import HParamSpec

INT_LIMIT = 2**31 - 1
FLOAT_LIMIT = 1e12
NARROW_COMBO_CHARS = 12


def narrow_combo(combo: QComboBox, chars: int = NARROW_COMBO_CHARS) -> QComboBox:
    """Let a combo box be narrower than its longest item (elided; the open list shows whole items), so a narrow
    dock needs no sideways scrolling."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    return combo


class FloatSpinBox(QDoubleSpinBox):
    """Shows values like 0.001 or 1e-05 instead of a fixed number of decimals; log-scale values step by x10^0.1."""

    def __init__(self, log_scale: bool = False, parent: QWidget | None = None):
        super().__init__(parent)
        self.log_scale = log_scale
        self.setDecimals(12)  # internal rounding only; the text uses 'g' formatting

    def textFromValue(self, value: float) -> str:
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:
        try:
            return float(text.strip())
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int):
        stripped = text.strip()
        try:
            value = float(stripped)
        except ValueError:
            partial = stripped in ("", "-", "+", ".", "-.") or stripped.lower().endswith(("e", "e-", "e+"))
            state = QValidator.State.Intermediate if partial else QValidator.State.Invalid
            return state, text, pos
        if self.minimum() <= value <= self.maximum():
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos

    def stepBy(self, steps: int) -> None:
        if self.log_scale and self.value() > 0:
            value = self.value() * 10 ** (0.1 * steps)
            self.setValue(float(f"{value:.3g}"))
        else:
            super().stepBy(steps)


def _float_step(spec: HParamSpec) -> float:
    reference = abs(spec.default) if spec.default else (abs(spec.high) if spec.high else 1.0)
    return 10 ** math.floor(math.log10(reference)) / 10 if reference > 0 else 0.1


# Phrases in help texts that give 0 a meaning; the spin box then shows a word instead of a bare 0.
_ZERO_MEANINGS = (("0 means no limit", "no limit"), ("0 only validates at the end", "at the end"),
                  ("0 uses the evaluation", "as evaluation"), ("0 uses the dataset's", "dataset default"),
                  ("0 uses", "default"), ("0 picks", "auto"), ("0 means", "default"))


def zero_meaning(spec: HParamSpec) -> str | None:
    if spec.low != 0 or spec.type not in (int, float):
        return None
    for phrase, word in _ZERO_MEANINGS:
        if phrase in spec.help:
            return word
    return None


def make_editor(spec: HParamSpec) -> QWidget:
    if spec.choices:
        editor = narrow_combo(QComboBox())
        for choice in spec.choices:
            editor.addItem(str(choice), choice)
        return editor
    if spec.type is bool:
        return QCheckBox()
    if spec.type is int:
        editor = QSpinBox()
        editor.setRange(int(spec.low) if spec.low is not None else -INT_LIMIT,
                        int(min(spec.high, INT_LIMIT)) if spec.high is not None else INT_LIMIT)
        editor.setGroupSeparatorShown(spec.high is not None and spec.high >= 100_000)
        editor.setAccelerated(True)
        special = zero_meaning(spec)
        if special:
            editor.setSpecialValueText(special)
        return editor
    if spec.type is float:
        editor = FloatSpinBox(log_scale=spec.log_scale)
        editor.setRange(spec.low if spec.low is not None else -FLOAT_LIMIT,
                        spec.high if spec.high is not None else FLOAT_LIMIT)
        editor.setSingleStep(_float_step(spec))
        special = zero_meaning(spec)
        if special:
            editor.setSpecialValueText(special)
        return editor
    return QLineEdit()


def read_editor(editor: QWidget) -> Any:
    if isinstance(editor, QComboBox):
        return editor.currentData()
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, QSpinBox):
        return int(editor.value())
    if isinstance(editor, QDoubleSpinBox):
        return float(editor.value())
    return editor.text()


def write_editor(editor: QWidget, value: Any) -> None:
    if isinstance(editor, QComboBox):
        index = editor.findData(value)
        if index >= 0:
            editor.setCurrentIndex(index)
    elif isinstance(editor, QCheckBox):
        editor.setChecked(bool(value))
    elif isinstance(editor, QSpinBox):
        editor.setValue(int(value))
    elif isinstance(editor, QDoubleSpinBox):
        editor.setValue(float(value))
    else:
        editor.setText(str(value))


def _changed_signal(editor: QWidget):
    if isinstance(editor, QComboBox):
        return editor.currentIndexChanged
    if isinstance(editor, QCheckBox):
        return editor.toggled
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.valueChanged
    return editor.textChanged


# Abbreviations in field names spelled out for row labels (the config key stays in the tooltip).
_WORDS = {"lr": "learning rate", "val": "validation", "num": "number of", "ci": "CI", "ema": "EMA"}


def title(spec: HParamSpec) -> str:
    if spec.label:
        return spec.label
    words = [_WORDS.get(word, word) for word in spec.name.split("_")]
    text = " ".join(words)
    return text[:1].upper() + text[1:]


def tooltip(spec: HParamSpec) -> str:
    allowed = spec.range_text()
    text = spec.help + (f"\nAllowed: {allowed}." if allowed else "") + f"\nDefault: {spec.default!r}."
    return text + f"\nConfig key: {spec.name}"


class HParamForm(QWidget):
    """Rows for a list of specs. ``values()`` gives plain Python values keyed by field name."""

    changed = Signal(str)  # name of the field that changed

    def __init__(self, specs: Iterable[HParamSpec] = (), parent: QWidget | None = None,
                 exclude: Iterable[str] = ()):
        super().__init__(parent)
        self._exclude = set(exclude)
        self._layout = QFormLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self._layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # narrow docks: field under label
        self._specs: dict[str, HParamSpec] = {}
        self._editors: dict[str, QWidget] = {}
        self._labels: dict[str, QLabel] = {}
        self._silent = False
        self.set_specs(specs)

    def set_specs(self, specs: Iterable[HParamSpec]) -> None:
        """Rebuild the rows (for example when another algorithm is chosen)."""
        while self._layout.rowCount():
            self._layout.removeRow(0)
        self._specs, self._editors, self._labels = {}, {}, {}
        for spec in specs:
            if spec.name in self._exclude:
                continue
            editor = make_editor(spec)
            editor.setObjectName(f"hparam_{spec.name}")
            label = QLabel(title(spec))
            label.setBuddy(editor)
            tip = tooltip(spec)
            label.setToolTip(tip)
            editor.setToolTip(tip)
            editor.setAccessibleName(title(spec))
            editor.setAccessibleDescription(spec.help)
            self._specs[spec.name] = spec
            self._editors[spec.name] = editor
            self._labels[spec.name] = label
            self._layout.addRow(label, editor)
            write_editor(editor, spec.default)
            _changed_signal(editor).connect(lambda *_, name=spec.name: self._emit_changed(name))

    def _emit_changed(self, name: str) -> None:
        if not self._silent:
            self.changed.emit(name)

    # --- access -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._specs)

    def specs(self) -> list[HParamSpec]:
        return list(self._specs.values())

    def editor(self, name: str) -> QWidget:
        return self._editors[name]

    def label(self, name: str) -> QLabel:
        return self._labels[name]

    def values(self) -> dict[str, Any]:
        return {name: read_editor(editor) for name, editor in self._editors.items()}

    def value(self, name: str) -> Any:
        return read_editor(self._editors[name])

    def set_value(self, name: str, value: Any) -> None:
        write_editor(self._editors[name], value)

    def set_values(self, values: dict[str, Any]) -> None:
        """Fill the fields named in ``values`` (others keep theirs); one ``changed`` signal at the end."""
        self._silent = True
        try:
            for name, value in values.items():
                if name in self._editors:
                    write_editor(self._editors[name], value)
        finally:
            self._silent = False
        self.changed.emit("")

    def reset_defaults(self) -> None:
        self.set_values({name: spec.default for name, spec in self._specs.items()})

    def insert_row(self, row: int, label: str, widget: QWidget) -> None:
        """A row that is not a declared field (e.g. the device box), aligned with the generated ones."""
        self._layout.insertRow(row, label, widget)

    def set_row_visible(self, name: str, visible: bool) -> None:
        if name in self._editors:
            self._layout.setRowVisible(self._editors[name], visible)

    def is_empty(self) -> bool:
        return not self._specs
