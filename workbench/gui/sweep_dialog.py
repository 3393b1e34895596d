"""The Sweep dialog: a hyperparameter study of the current experiment, set up from the declarations alone.

Every field a sweep may vary (``workbench.core.sweeps.sweepable_fields``: the dataset's, the training's, the
algorithm's hyperparameters and the kind's options) is a row with a tick box, grouped by section. A ticked number
takes a list of values or a range low..high (log optional); a ticked choice or switch takes the values ticked among
its choices; free text takes a comma-separated list. The study's settings are a form built from
``SweepSettings``'s declarations. Every change is checked by ``SweepSpec.checked()``; its message (which names the
field) shows under the rows and marks the row, and "Run study" and "Export study file…" stay off until the study is
valid. The exported file is the one ``workbench sweep STUDY.toml`` reads.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGridLayout,
                               QGroupBox, QHBoxLayout, QLabel, QLineEdit, QScrollArea, QStackedWidget,
                               QVBoxLayout, QWidget)

from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.hparams import HParamSpec, specs
from workbench.core.sweeps import (SweepableField, SweepError, SweepParameter, SweepSettings, SweepSpec,
                                   sweepable_fields)
from workbench.gui.hparam_form import HParamForm, title

LIST, RANGE = "list", "range"
MARK_STYLE = "QCheckBox, QLabel { color: %s; font-weight: bold; }"  # the row (or setting) an error names


def _number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_tooltip(field: SweepableField) -> str:
    spec = field.spec
    allowed = spec.range_text()
    return (spec.help + (f"\nAllowed: {allowed}." if allowed else "") + f"\nDefault: {spec.default!r}."
            + f"\nConfig path: {field.path}")


def default_range(spec: HParamSpec, current: Any) -> tuple[Any, Any]:
    """A starting range around the current value (x/10..x*10 on a log scale, x/2..x*2 otherwise), inside the
    declared bounds; the declared bounds when the value is 0."""
    low = spec.low if spec.low is not None else 0
    high = spec.high if spec.high is not None else max(1, abs(current) * 10)
    if current and current > 0:
        factor = 10 if spec.log_scale else 2
        low, high = max(low, current / factor), min(high, current * factor)
    if spec.type is int:
        return int(math.floor(low)), int(math.ceil(high))
    return float(f"{low:.3g}"), float(f"{high:.3g}")


class ParameterRow:
    """The widgets of one sweepable field: its tick box and how it varies."""

    def __init__(self, field: SweepableField, current: Any):
        self.field = field
        spec = field.spec
        tip = field_tooltip(field)
        self.tick = QCheckBox(title(spec))
        self.tick.setObjectName(f"sweep_{field.path}")
        self.tick.setToolTip(tip)
        self.mode = QComboBox()
        self.mode.addItem("values", LIST)
        self.mode.addItem("range", RANGE)
        self.mode.setToolTip("values: the listed values (the grid's points, or the categories random and TPE draw "
                             "from); range: low..high for the random and TPE samplers")
        self.mode.setVisible(field.numeric)
        self.stack = QStackedWidget()
        self.choice_boxes: list[QCheckBox] = []
        self.stack.addWidget(self._list_editor(spec, current, tip))
        self.stack.addWidget(self._range_editor(spec, current, tip))
        self.mode.currentIndexChanged.connect(self.stack.setCurrentIndex)
        self.tick.toggled.connect(self._enable)
        self._enable(False)

    def _list_editor(self, spec: HParamSpec, current: Any, tip: str) -> QWidget:
        choices = spec.choices or ((False, True) if spec.type is bool else None)
        if choices is None:
            self.values_edit = QLineEdit(_number_text(current))
            self.values_edit.setPlaceholderText("comma-separated values")
            self.values_edit.setToolTip(tip + "\n\nValues separated by commas.")
            return self.values_edit
        box = QWidget()
        layout = QHBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        for choice in choices:
            check = QCheckBox(str(choice).lower() if isinstance(choice, bool) else str(choice))
            check.setChecked(choice == current)
            check.setProperty("choice", choice)
            check.setToolTip(tip)
            self.choice_boxes.append(check)
            layout.addWidget(check)
        layout.addStretch(1)
        self.values_edit = None
        return box

    def _range_editor(self, spec: HParamSpec, current: Any, tip: str) -> QWidget:
        box = QWidget()
        layout = QHBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        low, high = default_range(spec, current) if self.field.numeric else ("", "")
        self.low_edit, self.high_edit = QLineEdit(_number_text(low)), QLineEdit(_number_text(high))
        self.log_box = QCheckBox("log")
        self.log_box.setChecked(spec.log_scale)
        self.log_box.setToolTip("Draw on a log scale (log-uniform); needs low > 0")
        for edit, word in ((self.low_edit, "low"), (self.high_edit, "high")):
            edit.setToolTip(tip + f"\n\nThe range's {word} end.")
            edit.setPlaceholderText(word)
        layout.addWidget(self.low_edit, 1)
        layout.addWidget(QLabel("to"))
        layout.addWidget(self.high_edit, 1)
        layout.addWidget(self.log_box)
        return box

    def _enable(self, on: bool) -> None:
        self.mode.setEnabled(on)
        self.stack.setEnabled(on)

    def editors(self) -> list[QWidget]:
        """Every widget whose change may change the study."""
        return [w for w in (self.tick, self.mode, self.values_edit, self.low_edit, self.high_edit, self.log_box,
                            *self.choice_boxes) if w is not None]

    @property
    def ticked(self) -> bool:
        return self.tick.isChecked()

    def set_values(self, values: Iterable[Any]) -> None:
        """Tick the row and list these values (tests and callers that pre-fill a study)."""
        values = list(values)
        self.tick.setChecked(True)
        self.mode.setCurrentIndex(0)
        if self.values_edit is not None:
            self.values_edit.setText(", ".join(_number_text(v) for v in values))
        for check in self.choice_boxes:
            check.setChecked(check.property("choice") in values)

    def set_range(self, low: Any, high: Any, log: bool = False) -> None:
        self.tick.setChecked(True)
        self.mode.setCurrentIndex(1)
        self.low_edit.setText(_number_text(low))
        self.high_edit.setText(_number_text(high))
        self.log_box.setChecked(log)

    def parameter(self) -> SweepParameter:
        """What the row says, as a SweepParameter (checked later against the declaration); SweepError naming
        the field when its text is not a number or nothing is listed."""
        where = f"sweep.parameters.{self.field.path}"
        if self.field.numeric and self.mode.currentData() == RANGE:
            low, high = (self._number(edit.text(), where) for edit in (self.low_edit, self.high_edit))
            if low is None or high is None:
                raise SweepError(f"{where}: give both ends of the range")
            return SweepParameter(self.field.path, [], low, high, self.log_box.isChecked())
        if self.values_edit is None:
            values = [check.property("choice") for check in self.choice_boxes if check.isChecked()]
        elif self.field.numeric:
            values = [self._number(token, where) for token in self.values_edit.text().split(",") if token.strip()]
        else:
            values = [token.strip() for token in self.values_edit.text().split(",") if token.strip()]
        if not values:
            raise SweepError(f"{where}: give at least one value")
        return SweepParameter(self.field.path, values)

    def _number(self, text: str, where: str) -> Any:
        text = text.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise SweepError(f"{where}: '{text}' is not a number") from None
        return int(value) if self.field.spec.type is int and value.is_integer() else value


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    number = 2
    while f"{name}-{number}" in taken:
        number += 1
    return f"{name}-{number}"


class SweepDialog(QDialog):
    """Set up a study of ``config`` (an ExperimentConfig). ``spec()`` is the checked SweepSpec once accepted."""

    def __init__(self, config, parent: QWidget | None = None, existing: Iterable[str] = (), settings=None):
        super().__init__(parent)
        self.setWindowTitle("Sweep: a hyperparameter study")
        self.setObjectName("sweepDialog")
        self._settings = settings  # the app's Settings (the last export folder), optional
        self._existing = set(existing)
        self.base = config.to_dict()
        if not config.algorithm.recipe:  # the panels' values as they are: no recommended recipe added later
            self.base["algorithm"]["recipe"] = "none"
        self.fields = sweepable_fields(config)
        self.rows: dict[str, ParameterRow] = {}
        self._valid: SweepSpec | None = None
        self.error_text = ""
        self._marked: list[QWidget] = []
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)  # a burst of changes is checked once
        self._timer.timeout.connect(self.validate)
        self._build(config)
        self.validate()

    # --- layout -----------------------------------------------------------------------------
    def _build(self, config) -> None:
        intro = QLabel(f"Vary the ticked fields of the current experiment ({config.algorithm.name} on "
                       f"{config.dataset.name}); each trial is an ordinary run. Hover a field for its help.")
        intro.setWordWrap(True)
        body = QHBoxLayout()
        body.addWidget(self._parameters_area(config), 1)
        body.addWidget(self._settings_box(config))
        self.error_label = QLabel()
        self.error_label.setObjectName("sweepError")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.run_button = self.buttons.addButton("Run study", QDialogButtonBox.ButtonRole.AcceptRole)
        self.run_button.setDefault(True)
        self.export_button = self.buttons.addButton("Export study file…", QDialogButtonBox.ButtonRole.ActionRole)
        self.export_button.setToolTip("Save the study as a TOML file for `workbench sweep STUDY.toml`")
        self.export_button.clicked.connect(self._export_dialog)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(body, 1)
        layout.addWidget(self.error_label)
        layout.addWidget(self.plan_label)
        layout.addWidget(self.buttons)
        self.resize(980, 680)

    def _parameters_area(self, config) -> QScrollArea:
        """One grid for every section (so the columns line up), a bold heading per section."""
        content = QWidget()
        grid = QGridLayout(content)
        grid.setColumnStretch(2, 1)
        grid.setVerticalSpacing(4)
        values = config.to_dict()
        section = None
        for field in self.fields:
            if field.section != section:
                section = field.section
                heading = QLabel(f"<b>{section}</b>")
                heading.setContentsMargins(0, 8 if grid.rowCount() > 1 else 0, 0, 2)
                grid.addWidget(heading, grid.rowCount(), 0, 1, 3)
            current = _at(values, field.path)
            row = ParameterRow(field, field.spec.default if current is None else current)
            self.rows[field.path] = row
            line = grid.rowCount()
            grid.addWidget(row.tick, line, 0)
            grid.addWidget(row.mode, line, 1)
            grid.addWidget(row.stack, line, 2)
            for editor in row.editors():
                _changed(editor).connect(self._timer.start)
        grid.setRowStretch(grid.rowCount(), 1)
        area = QScrollArea()
        area.setWidget(content)
        area.setWidgetResizable(True)
        area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        area.setMinimumWidth(content.sizeHint().width() + area.verticalScrollBar().sizeHint().width() + 4)
        return area

    def _settings_box(self, config) -> QGroupBox:
        group = QGroupBox("Study")
        layout = QVBoxLayout(group)
        self.settings_form = HParamForm(specs(SweepSettings))
        default_name = _unique(f"{config.name or config.algorithm.name}-sweep", self._existing)
        self.settings_form.set_values({"name": default_name})
        self.settings_form.editor("name").setCursorPosition(0)  # the name's start shows in a narrow box
        self.settings_form.editor("workers").setSpecialValueText("auto")  # 0: the cores / threads per trial
        self.settings_form.changed.connect(lambda _: self._timer.start())
        layout.addWidget(self.settings_form)
        layout.addStretch(1)
        group.setMaximumWidth(400)
        return group

    # --- the study --------------------------------------------------------------------------
    def row(self, path: str) -> ParameterRow:
        return self.rows[path]

    def build_spec(self) -> SweepSpec:
        """The study as the dialog shows it, unchecked (SweepError for a row's unreadable text)."""
        values = self.settings_form.values()
        settings = SweepSettings(**values)
        settings.parameters = [row.parameter() for row in self.rows.values() if row.ticked]
        return SweepSpec(self.base, settings)

    def validate(self) -> SweepSpec | None:
        """Check the study; show the error (and mark its row) or the plan. Returns the checked spec or None."""
        self._timer.stop()
        self._unmark()
        try:
            spec = self.build_spec().checked()
        except (SweepError, ConfigError) as exc:
            self._valid, self.error_text = None, str(exc)
            self.error_label.setText(f"<span style='color:{self._error_colour()}'>{_escape(str(exc))}</span>")
            self.plan_label.setText("")
            self._mark(str(exc))
        else:
            self._valid, self.error_text = spec, ""
            self.error_label.setText("")
            self.plan_label.setText(self._plan_text(spec))
        self.run_button.setEnabled(self._valid is not None)
        self.export_button.setEnabled(self._valid is not None)
        return self._valid

    def _plan_text(self, spec: SweepSpec) -> str:
        settings = spec.settings
        how = (f"a grid of {len(spec.grid())} combinations" if settings.sampler == "grid"
               else f"the {settings.sampler} sampler")
        text = (f"{spec.planned_trials()} trials from {how}, {settings.resolved_workers()} at a time "
                f"({settings.threads} thread{'s' if settings.threads != 1 else ''} each); trials are runs named "
                f"{settings.name}-trial-<n>.")
        if settings.name in self._existing:
            text += (f" A study named {settings.name} exists: running resumes it (if its experiment is the same).")
        return text

    def _error_colour(self) -> str:
        theme = getattr(self.parent(), "theme", None)
        return getattr(theme, "error_text", "#c92a2a")

    def _mark(self, message: str) -> None:
        """Colour the row or setting the message names."""
        match = re.match(r"sweep\.parameters\.([\w.]+?)(?:\.(?:values|low|high|log))?:", message)
        widgets: list[QWidget] = []
        if match and match.group(1) in self.rows:
            widgets = [self.rows[match.group(1)].tick]
        else:
            match = re.match(r"sweep\.(\w+):", message)
            if match and match.group(1) in self.settings_form.names():
                widgets = [self.settings_form.label(match.group(1))]
        for widget in widgets:
            widget.setStyleSheet(MARK_STYLE % self._error_colour())
        self._marked = widgets

    def _unmark(self) -> None:
        for widget in self._marked:
            widget.setStyleSheet("")
        self._marked = []

    def is_valid(self) -> bool:
        return self._valid is not None

    def spec(self) -> SweepSpec:
        """The checked study (raises when the dialog does not hold a valid one)."""
        spec = self.validate()
        if spec is None:
            raise SweepError(self.error_text)
        return spec

    def accept(self) -> None:
        if self.validate() is not None:
            super().accept()

    # --- export -----------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the study file (what `workbench sweep` reads); SweepError when the study is not valid."""
        return self.spec().save(path)

    def _export_dialog(self) -> None:
        if self.validate() is None:
            return
        start = (self._settings.last_folder("studies") if self._settings else "") or str(Path.home())
        name = f"{self._valid.settings.name}.toml"
        path, _ = QFileDialog.getSaveFileName(self, "Export study file", str(Path(start) / name),
                                              "Study file (*.toml)")
        if not path:
            return
        try:
            self.export(path)
        except (OSError, WorkbenchError) as exc:
            self.error_label.setText(f"<span style='color:{self._error_colour()}'>Writing {_escape(path)} failed: "
                                     f"{_escape(str(exc))}</span>")
            return
        if self._settings:
            self._settings.save_folder("studies", str(Path(path).parent))
        self.plan_label.setText(f"Saved {path}; run it with `workbench sweep {path}`.")


def _at(data: dict, path: str) -> Any:
    for key in path.split("."):
        data = data.get(key, {}) if isinstance(data, dict) else {}
    return data if not isinstance(data, dict) else None


def _changed(widget: QWidget):
    if isinstance(widget, QComboBox):
        return widget.currentIndexChanged
    if isinstance(widget, QCheckBox):
        return widget.toggled
    return widget.textChanged


def _escape(text: str) -> str:
    import html

    return html.escape(text)
