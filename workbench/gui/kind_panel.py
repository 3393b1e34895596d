"""The experiment kind, first in the setup: a choice of the installed kinds (``catalog.kinds_info()``), what the
chosen one trains on and reports (its description as the tooltip), and its own settings (the ``[task]``
section, a form generated from ``Kind.option_specs()``)."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from workbench.core import catalog
from workbench.core.kinds import DEFAULT_KIND, get_kind_class
from workbench.gui.hparam_form import HParamForm, narrow_combo


class KindPanel(QWidget):
    kind_changed = Signal(str)  # the kind's name, when the user (or set_kind) picks another
    changed = Signal()  # the kind or one of its options changed

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._silent = False
        # Options typed for one kind are kept when switching away and back.
        self._options_by_kind: dict[str, dict[str, Any]] = {}
        self.combo = narrow_combo(QComboBox(), 16)
        self.combo.setObjectName("kindName")
        for info in catalog.kinds_info():
            self.combo.addItem(info["title"], info["name"])
            self.combo.setItemData(self.combo.count() - 1, info["description"], Qt.ItemDataRole.ToolTipRole)
        self.description = QLabel()
        self.description.setObjectName("kindDescription")
        self.description.setWordWrap(True)
        self.options_form = HParamForm()
        self.options_form.setObjectName("kindOptions")
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Kind", self.combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 8)
        layout.addLayout(form)
        layout.addWidget(self.description)
        layout.addWidget(self.options_form)
        self._current: str | None = None
        index = self.combo.findData(DEFAULT_KIND)
        self.combo.setCurrentIndex(max(0, index))
        self._show_kind()
        self.combo.currentIndexChanged.connect(lambda _: self._on_combo())
        self.options_form.changed.connect(lambda _: None if self._silent else self.changed.emit())

    def kind_name(self) -> str:
        return self.combo.currentData()

    def set_kind(self, name: str) -> bool:
        """Choose a kind (emits kind_changed when it differs); False when it is not installed."""
        index = self.combo.findData(name)
        if index < 0:
            return False
        self.combo.setCurrentIndex(index)
        return True

    def options(self) -> dict[str, Any]:
        return self.options_form.values()

    def set_options(self, values: dict[str, Any]) -> None:
        self._silent = True
        try:
            self.options_form.reset_defaults()
            self.options_form.set_values(dict(values or {}))
        finally:
            self._silent = False
        self.changed.emit()

    def _on_combo(self) -> None:
        self._show_kind()
        self.kind_changed.emit(self.kind_name())
        self.changed.emit()

    def _show_kind(self) -> None:
        if self._current is not None:
            self._options_by_kind[self._current] = self.options_form.values()
        self._current = self.kind_name()
        cls = get_kind_class(self._current)
        # One line here (the dock sits above the panels); the whole description is the tooltip.
        metric = cls.metric
        name = metric.title if metric.title.isupper() else metric.title.lower()
        better = "higher" if metric.higher_is_better else "lower"
        self.description.setText(f"Trains on {cls.trains_on}; reports {name} ({better} is better).")
        self.description.setToolTip(cls.description)
        self.combo.setToolTip(cls.description)
        self._silent = True
        try:
            self.options_form.set_specs(cls.option_specs())
            self.options_form.set_values(self._options_by_kind.get(self._current, {}))
        finally:
            self._silent = False
        self.options_form.setVisible(not self.options_form.is_empty())
        # The dock above the panels takes no more height than this needs (no blank rows under the text).
        self.setMaximumHeight(16_777_215)
        self.setMaximumHeight(self.sizeHint().height())
