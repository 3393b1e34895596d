"""What survives a restart: window geometry and dock layout, the experiment kind, the last experiment, the number
of training processes and the theme.

Stored with QSettings in INI format (organization "MetaLearningWorkbench", application "workbench").
Tests and the screenshot tour redirect it with ``QSettings.setPath(IniFormat, UserScope, folder)`` or with
the ``WORKBENCH_SETTINGS_DIR`` environment variable, so they never touch a user's settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

from workbench.gui.theme import THEME_CHOICES

ORGANIZATION = "MetaLearningWorkbench"
APPLICATION = "workbench"
# Bump when the layout of the window changes incompatibly: an old saved dock layout is then ignored.
# 2: the experiment kind got its own dock above the dataset and algorithm panels.
SETTINGS_VERSION = 2
SETTINGS_DIR_ENV = "WORKBENCH_SETTINGS_DIR"


def open_settings() -> QSettings:
    folder = os.environ.get(SETTINGS_DIR_ENV)
    if folder:
        path = Path(folder) / ORGANIZATION / f"{APPLICATION}.ini"
        return QSettings(str(path), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, ORGANIZATION, APPLICATION)


class Settings:
    def __init__(self, qsettings: QSettings | None = None):
        self._q = qsettings or open_settings()

    @property
    def path(self) -> str:
        return self._q.fileName()

    @property
    def qsettings(self) -> QSettings:
        """The underlying store, for widgets that keep their own group (e.g. the runs table)."""
        return self._q

    def _compatible(self) -> bool:
        return int(self._q.value("version", 0) or 0) == SETTINGS_VERSION

    # --- window -----------------------------------------------------------------------------
    def window_geometry(self) -> QByteArray | None:
        value = self._q.value("window/geometry") if self._compatible() else None
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def window_state(self) -> QByteArray | None:
        value = self._q.value("window/state") if self._compatible() else None
        return value if isinstance(value, QByteArray) and not value.isEmpty() else None

    def save_window(self, geometry: QByteArray, state: QByteArray) -> None:
        self._q.setValue("version", SETTINGS_VERSION)
        self._q.setValue("window/geometry", geometry)
        self._q.setValue("window/state", state)

    # --- experiment -------------------------------------------------------------------------
    def last_experiment_toml(self) -> str | None:
        value = self._q.value("experiment/config")
        return value if isinstance(value, str) and value.strip() else None

    def save_experiment_toml(self, text: str) -> None:
        self._q.setValue("experiment/config", text)

    def kind(self) -> str:
        """The experiment kind chosen last ("" when none was saved); kept apart from the experiment, which is
        not saved while it is invalid."""
        value = self._q.value("experiment/kind")
        return value if isinstance(value, str) else ""

    def save_kind(self, name: str) -> None:
        self._q.setValue("experiment/kind", name)

    def last_folder(self, kind: str) -> str:
        value = self._q.value(f"folders/{kind}")
        return value if isinstance(value, str) else ""

    def save_folder(self, kind: str, folder: str) -> None:
        self._q.setValue(f"folders/{kind}", folder)

    def processes(self) -> int:
        """How many processes train a run (a launch setting of this machine, never part of an experiment)."""
        try:
            return max(1, int(self._q.value("training/processes", 1)))
        except (TypeError, ValueError):
            return 1

    def save_processes(self, count: int) -> None:
        self._q.setValue("training/processes", max(1, int(count)))

    # --- appearance -------------------------------------------------------------------------
    def theme(self) -> str:
        value = self._q.value("appearance/theme", "system")
        return value if value in THEME_CHOICES else "system"

    def save_theme(self, preference: str) -> None:
        self._q.setValue("appearance/theme", preference if preference in THEME_CHOICES else "system")

    def sync(self) -> None:
        self._q.sync()
