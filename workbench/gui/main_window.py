"""The main window: experiment setup docked on the left (the kind first, then dataset and algorithm), views as
tabs in the centre, a status bar.

Integration points for views:

- Views are tabs built from :mod:`workbench.gui.view_registry` (``@register_view`` classes with ``for_window``);
  a tab whose capability the kind (or the chosen algorithm) does not give is greyed and says what feeds it.
  ``MainWindow.add_view(name, widget)`` adds a plain tab; a widget with ``apply_theme(theme)`` follows the theme.
- ``MainWindow.training_records(job_id, payload)``: the worker's throttled records (numpy arrays, see
  ``workbench.gui.worker.RecordBatch.payload``); ``training_started(job_id, info)`` and
  ``training_finished(job_id, final)`` bracket a job; ``kind_changed(name)`` follows the setup's kind.
  ``MainWindow.dataset()`` is the loaded dataset.
- ``MainWindow.current_config()`` is the ONE place the panels become an ExperimentConfig.

Cold start: this module imports neither torch nor the plotting code. ``MainWindow(deferred=True)`` builds only the
frame (menus, toolbar, empty docks), so ``workbench`` shows the window at once; :meth:`MainWindow.finish_startup`
then builds the panels and views (which import torch and pyqtgraph) a step per event-loop tick and emits ``ready``.
"""

from __future__ import annotations

import importlib
import math
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from PySide6.QtCore import QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox,
                               QProgressBar, QScrollArea, QStyle, QTabWidget, QToolBar, QWidget)

from workbench.core.errors import ConfigError, EpisodeError, WorkbenchError
from workbench.gui import theme as themes
from workbench.gui import view_registry
from workbench.gui.settings import Settings

if TYPE_CHECKING:
    from workbench.core.config import ExperimentConfig

APP_TITLE = "Meta-Learning Workbench"
FINAL_MESSAGES = {
    "finished": "finished",
    "budget": "finished (time budget spent)",
    "stopped": "stopped and saved",
    "diverged": "diverged",
    "cancelled": "cancelled before training started",
}
PREFERRED_SIZE = QSize(1360, 860)  # the window's size on a large screen
SCREEN_SHARE = 0.94  # of the available screen, on smaller ones (the frame and title bar take the rest)
DOCK_SHARE, DOCK_WIDTH = 0.27, (310, 380)  # the setup docks' share of the window's width, and its bounds
DOCK_MINIMUM_WIDTH = 200  # narrower, the panels scroll sideways
KIND_DOCK_HEIGHT = 90  # the experiment kind's dock before its panel is built
# Imported in a thread while the shown window waits (torch is most of the start-up time).
PRELOAD = ("workbench.core.catalog", "workbench.core.config", "workbench.core.algorithms")
PRELOAD_POLL_MS = 15


def _import_quietly(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the main thread's own import reports it
            return


def _preload_core() -> threading.Thread:
    """Import the core (torch, a second or two) in a thread, so the shown window keeps repainting meanwhile."""
    thread = threading.Thread(target=_import_quietly, args=(PRELOAD,), name="workbench-preload")
    thread.start()
    return thread


def _dialogs():
    """workbench.gui.dialogs, imported on first use (it is not needed to show the window); None when absent."""
    try:
        from workbench.gui import dialogs
    except ImportError:  # pragma: no cover
        return None
    return dialogs


def default_window_size(available: QSize) -> QSize:
    """The window's first size on a screen with this much room: PREFERRED_SIZE, shrunk to fit small screens."""
    return QSize(min(PREFERRED_SIZE.width(), int(available.width() * SCREEN_SHARE)),
                 min(PREFERRED_SIZE.height(), int(available.height() * SCREEN_SHARE)))


def fit_to_screen(frame: QRect, available: QRect) -> QRect:
    """A window frame (restored from settings) moved and shrunk to lie on the available screen."""
    width, height = min(frame.width(), available.width()), min(frame.height(), available.height())
    x = min(max(frame.x(), available.x()), available.right() + 1 - width)
    y = min(max(frame.y(), available.y()), available.bottom() + 1 - height)
    return QRect(x, y, width, height)


def _scrolled(widget: QWidget) -> QScrollArea:
    """A dock's contents: scrolls (sideways too, when the dock is narrower than the panel) rather than forcing the
    window's size."""
    area = QScrollArea()
    area.setWidget(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QScrollArea.Shape.NoFrame)
    return area


def _loading_label(text: str) -> QLabel:
    label = QLabel(text)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setEnabled(False)
    return label


def _task_text(kind: str, ways: int, shots: int) -> str:
    """"5-way 1-shot" for kinds with classes, "10-shot" for kinds of points."""
    from workbench.core.kinds import get_kind_class

    try:
        fields = get_kind_class(kind).dataset_fields
    except WorkbenchError:
        fields = ("ways", "shots")
    return f"{ways}-way {shots}-shot" if "ways" in fields else f"{shots}-shot"


def _metric_key(kind: str) -> str | None:
    from workbench.core.kinds import get_kind_class

    try:
        return get_kind_class(kind).metric.key
    except WorkbenchError:
        return None


class MainWindow(QMainWindow):
    training_started = Signal(int, object)  # job id, info (run_id, run_name, device, total_steps, …)
    training_records = Signal(int, object)  # job id, payload of numpy arrays (throttled to ~20/s)
    training_finished = Signal(int, object)  # job id, final info (event, message, run_id, …)
    theme_changed = Signal(object)  # theme.Theme
    run_store_changed = Signal()
    kind_changed = Signal(str)  # the experiment kind chosen in the setup

    ready = Signal()  # the panels and views are built (see finish_startup)

    def __init__(self, store=None, settings: Settings | None = None, restore: bool = True,
                 trainer_factory: Callable | None = None, auto_load: bool = True, deferred: bool = False):
        """``deferred``: build only the frame now (it shows at once, without importing torch); the caller then
        calls :meth:`finish_startup` from the event loop. Otherwise the window is complete on return."""
        super().__init__()
        from workbench.core.runs import RunStore

        self.store = store if store is not None else RunStore()
        self.settings = settings or Settings()
        self.theme_preference = self.settings.theme() if restore else "system"
        self.theme = themes.resolve(self.theme_preference)
        # Tests (and the tour) answer the "stop training?" question on close without a dialog.
        self.confirm_stop_on_close: Callable[[], bool] | None = None
        self.last_error: tuple[str, str, str | None] | None = None
        self.run_blocked_reason: str | None = None
        self.last_final: dict[str, Any] | None = None
        self._views: dict[str, QWidget] = {}  # plain tabs added with add_view
        self._view_tabs: dict[str, view_registry.ViewTab] = {}  # registered views' tabs, by title
        self._registered: list[tuple[type, QWidget]] = []  # (view class, view), in tab order
        # The (kind, algorithm) of the run trained last and of the run the user opened: their tabs stay enabled.
        self._shown_runs: dict[str, tuple[str, str]] = {}
        self._greeted = False
        self._active_run_id: str | None = None
        self.is_ready = False
        self._layout_restored = False
        self._shown_once = False
        self._steps: Iterator[threading.Thread | None] | None = self._build_contents(restore, trainer_factory,
                                                                                   auto_load)
        self._build_frame(restore)
        if not deferred:
            for thread in self._steps:
                if thread is not None:
                    thread.join()
            self._steps = None

    # --- construction -----------------------------------------------------------------------
    def _build_frame(self, restore: bool) -> None:
        """What shows before the contents are built: title, docks (empty), toolbar, menus, status bar, size."""
        self.setWindowTitle(APP_TITLE)
        self.setObjectName("MainWindow")
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.setCentralWidget(_loading_label("Loading the views…"))
        self._build_docks()
        self._build_actions()
        self._build_menus()
        self._build_status_bar()
        app = QApplication.instance()
        if app is not None:
            themes.apply(app, self.theme)  # the palette now, so the frame does not change colours later
        screen = self.screen() or QGuiApplication.primaryScreen()
        self.resize(default_window_size(screen.availableGeometry().size()) if screen else PREFERRED_SIZE)
        self._default_state = self.saveState()
        if restore:
            self._restore_layout()
        for action in self._actions_after_startup:
            action.setEnabled(False)
        self.statusBar().showMessage("Loading the experiment setup…")

    def finish_startup(self) -> None:
        """Build the panels and views one step per event-loop tick (the window repaints between steps); emits
        ``ready`` at the end. Call it once the window is shown, from the event loop."""
        if self._steps is None:
            return
        try:
            waiting = next(self._steps)
        except StopIteration:
            self._steps = None
            return
        except Exception as exc:  # a broken view or plugin: say so rather than leave a half-built window
            self._steps = None
            self.report_error("The workbench could not finish starting", str(exc), traceback.format_exc())
            return
        QTimer.singleShot(PRELOAD_POLL_MS if waiting is not None else 0, self.finish_startup)

    def _build_contents(self, restore: bool, trainer_factory: Callable | None, auto_load: bool
                        ) -> Iterator[threading.Thread | None]:
        """The panels, the training controller and the views, then the restored experiment (a generator: it
        yields between steps, or a thread to wait for)."""
        preload = _preload_core()
        while preload.is_alive():
            yield preload
        from workbench.gui.worker import TrainingController

        self.controller = TrainingController(self, trainer_factory=trainer_factory)
        self.controller.job_started.connect(self._on_job_started)
        self.controller.loading.connect(self._on_job_loading)
        self.controller.records.connect(self._on_job_records)
        self.controller.job_finished.connect(self._on_job_finished)
        self.controller.job_failed.connect(self._on_job_failed)
        self.controller.state_changed.connect(lambda _: self._update_actions())
        self._build_panels(auto_load)
        yield
        classes = self._build_tabs()
        for cls in classes:
            yield
            self._build_view(cls)
        yield
        self._update_tabs()
        self._finish_contents(restore)

    def _finish_contents(self, restore: bool) -> None:
        dialogs = _dialogs()
        if dialogs is not None:
            self.setWindowIcon(dialogs.app_icon())
        self._apply_theme_now()
        if not self._layout_restored and self._shown_once:
            self._size_docks()  # again: the kind's height is known now
        if restore:
            self._restore_settings()
        self.algorithm_panel.processes_changed.connect(self.settings.save_processes)
        self._revalidate_timer = QTimer(self)
        self._revalidate_timer.setSingleShot(True)
        self._revalidate_timer.setInterval(0)  # coalesce a burst of field changes into one check
        self._revalidate_timer.timeout.connect(self.revalidate)
        self.dataset_panel.changed.connect(self._revalidate_timer.start)
        self.dataset_panel.loading_changed.connect(lambda _: self._revalidate_timer.start())
        self.algorithm_panel.changed.connect(self._revalidate_timer.start)
        hints = QGuiApplication.styleHints()
        if hasattr(hints, "colorSchemeChanged"):
            hints.colorSchemeChanged.connect(self._on_system_scheme_changed)
        for widget in (*self._actions_after_startup, self.kind_dock.widget(), self.dataset_dock.widget(),
                       self.algorithm_dock.widget()):
            widget.setEnabled(True)
        self.is_ready = True
        if self.statusBar().currentMessage().startswith("Loading"):
            self.statusBar().clearMessage()
        self.revalidate()
        self._note_plugin_problems()
        self.ready.emit()

    def _note_plugin_problems(self) -> None:
        """A broken plugin never stops the app; the status bar says so and Help > Plugins… says why."""
        from workbench.gui.plugins_dialog import plugin_problems_note

        note = plugin_problems_note()
        if note:
            self.statusBar().showMessage(note, 15000)

    def _build_docks(self) -> None:
        """The setup docks, holding "Loading…" until the panels are built."""
        self.kind_dock = QDockWidget("Experiment", self)
        self.kind_dock.setObjectName("kindDock")
        self.dataset_dock = QDockWidget("Dataset", self)
        self.dataset_dock.setObjectName("datasetDock")
        self.algorithm_dock = QDockWidget("Algorithm && training", self)
        self.algorithm_dock.setObjectName("algorithmDock")
        for dock in (self.kind_dock, self.dataset_dock, self.algorithm_dock):
            dock.setWidget(_loading_label("Loading…"))
            dock.setAllowedAreas(Qt.DockWidgetArea.LeftDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
            dock.setMinimumWidth(DOCK_MINIMUM_WIDTH)
            self.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, dock)
        self.setTabPosition(Qt.DockWidgetArea.AllDockWidgetAreas, QTabWidget.TabPosition.North)
        self.tabifyDockWidget(self.dataset_dock, self.algorithm_dock)
        self.dataset_dock.raise_()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._shown_once and not self._layout_restored:
            self._size_docks()  # dock sizes set before the first show do not hold
        self._shown_once = True

    def _size_docks(self) -> None:
        """The default dock sizes: a share of the window's width; the kind as short as its contents allow."""
        low, high = DOCK_WIDTH
        width = max(low, min(high, round(self.width() * DOCK_SHARE)))
        self.resizeDocks([self.kind_dock, self.dataset_dock], [width, width], Qt.Orientation.Horizontal)
        self._fit_kind_dock(width)

    def _fit_kind_dock(self, width: int | None = None) -> None:
        """The kind dock as tall as its panel needs (its description and the kind's options), at most 40% of the
        window: a kind with settings shows them all, one without leaves no blank rows."""
        panel = getattr(self, "kind_panel", None)
        height = KIND_DOCK_HEIGHT  # while starting: about what the panel will need
        if panel is not None:  # the height its wrapped description needs at that width, plus the title bar
            width = width or self.kind_dock.width()
            height = max(panel.heightForWidth(width) if panel.hasHeightForWidth() else -1, panel.sizeHint().height())
            title_bar = self.kind_dock.minimumSizeHint().height() - self.kind_dock.widget().minimumSizeHint().height()
            height = min(height + max(title_bar, 0), round(0.4 * self.height()))
        self.resizeDocks([self.kind_dock], [height], Qt.Orientation.Vertical)

    def _build_panels(self, auto_load: bool) -> None:
        from workbench.gui.algorithm_panel import AlgorithmPanel
        from workbench.gui.dataset_panel import DatasetPanel
        from workbench.gui.kind_panel import KindPanel

        self.kind_panel = KindPanel()
        self.dataset_panel = DatasetPanel(theme=self.theme, auto_load=auto_load, kind=self.kind_panel.kind_name())
        self.algorithm_panel = AlgorithmPanel(kind=self.kind_panel.kind_name())
        self.kind_panel.kind_changed.connect(self._on_kind_changed)
        self.algorithm_panel.recipe_applied.connect(self._apply_recipe)
        self.dataset_panel.name_combo.currentIndexChanged.connect(
            lambda _: self.algorithm_panel.set_dataset(self.dataset_panel.dataset_name()))
        for dock, panel in ((self.kind_dock, self.kind_panel), (self.dataset_dock, self.dataset_panel),
                            (self.algorithm_dock, self.algorithm_panel)):
            dock.setWidget(_scrolled(panel))
            dock.widget().setEnabled(False)  # until the views that follow the setup are built

    def _build_tabs(self) -> list[type]:
        """The tab widget and the registered view classes (imported here: they bring pyqtgraph and torch)."""
        self.tabs = QTabWidget()
        self.tabs.setObjectName("views")
        self.tabs.setDocumentMode(True)
        self.setCentralWidget(self.tabs)
        classes = view_registry.view_classes()
        for cls in classes:  # None until built, so a view may look for another with getattr
            name = view_registry.attribute_name(cls)
            if hasattr(type(self), name):
                raise TypeError(f"view {cls.__name__} would hide MainWindow.{name}; rename the class")
            setattr(self, name, None)
        return classes

    def _build_view(self, cls: type) -> None:
        view = cls.for_window(self)
        setattr(self, view_registry.attribute_name(cls), view)
        view.setObjectName(view.objectName() or f"{view_registry.attribute_name(cls)}")
        tab = self._view_tabs.get(cls.view_title)
        if tab is None:
            tab = self._view_tabs[cls.view_title] = view_registry.ViewTab(cls.view_title)
            self.tabs.addTab(tab, cls.view_title)
        tab.add_view(cls.view_capability, view)
        self._registered.append((cls, view))

    def add_view(self, name: str, widget: QWidget) -> int:
        """Add a plain tab (always enabled); it follows the theme when it has ``apply_theme(theme)``. Returns the
        tab index. Views that depend on the kind register with view_registry instead."""
        widget.setObjectName(widget.objectName() or f"{name.lower().replace(' ', '_')}_view")
        self._views[name] = widget
        index = self.tabs.addTab(widget, name)
        if hasattr(widget, "apply_theme"):
            widget.apply_theme(self.theme)
        return index

    def view(self, name: str) -> QWidget | None:
        """A view by tab title (a shared tab gives the page of the current kind) or by capability."""
        if name in self._view_tabs:
            return self._view_tabs[name].current_view()
        if name in self._views:
            return self._views[name]
        return next((view for cls, view in self._registered if cls.view_capability == name), None)

    def views(self) -> dict[str, QWidget]:
        """Tab title -> the view shown there."""
        shown = {title: tab.current_view() for title, tab in self._view_tabs.items()}
        shown.update(self._views)
        return shown

    def all_views(self) -> list[QWidget]:
        """Every view, also those on hidden pages of shared tabs."""
        return [view for _, view in self._registered] + list(self._views.values())

    def show_view(self, name: str) -> None:
        if name in self._view_tabs:
            self.tabs.setCurrentWidget(self._view_tabs[name])
        elif name in self._views:
            self.tabs.setCurrentWidget(self._views[name])

    def tab_enabled(self, title: str) -> bool:
        tab = self._view_tabs.get(title)
        return tab is not None and self.tabs.isTabEnabled(self.tabs.indexOf(tab))

    def tab_tooltip(self, title: str) -> str:
        tab = self._view_tabs.get(title)
        return self.tabs.tabToolTip(self.tabs.indexOf(tab)) if tab is not None else ""

    def _update_tabs(self) -> None:
        """Enable the tabs that apply to the setup's kind and algorithm, or to the run shown; grey the others
        with a tooltip saying which kinds and algorithms feed them."""
        if not hasattr(self, "tabs"):
            return
        contexts = [(self.kind_panel.kind_name(), self.algorithm_panel.algorithm_name())]
        contexts += list(self._shown_runs.values())
        for tab in self._view_tabs.values():
            reason = tab.choose(contexts)
            index = self.tabs.indexOf(tab)
            self.tabs.setTabEnabled(index, not reason)
            self.tabs.setTabToolTip(index, reason)
            tab.setEnabled(True)  # the tab is greyed; its page (the explanation, if shown) stays readable

    def _show_run_of(self, config, source: str) -> None:
        """Keep the tabs of this run's kind and algorithm enabled; ``source``: "trained" or "opened" (the
        views follow both the live run and the run opened from the Runs view)."""
        try:
            self._shown_runs[source] = (config.kind, config.algorithm.name)
        except AttributeError:  # a damaged config: the setup and the other run decide
            self._shown_runs.pop(source, None)
        self._update_tabs()

    def dataset(self):
        """The FewShotDataset loaded for the current settings, or None."""
        return self.dataset_panel.dataset if self.dataset_panel.is_ready() else None

    def _action(self, text: str, slot, shortcuts=(), tip: str = "", icon=None) -> QAction:
        action = QAction(text, self)
        if shortcuts:
            action.setShortcuts([QKeySequence(s) for s in shortcuts])
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        if tip:
            action.setToolTip(tip + (f" ({QKeySequence(shortcuts[0]).toString(QKeySequence.SequenceFormat.NativeText)})"
                                     if shortcuts else ""))
            action.setStatusTip(tip)
        if icon is not None:
            action.setIcon(self.style().standardIcon(icon))
        action.triggered.connect(lambda *_: slot())
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        sp = QStyle.StandardPixmap
        self.run_action = self._action("&Run", self.start_training, ("Ctrl+R",), "Start meta-training",
                                       sp.SP_MediaPlay)
        self.pause_action = self._action("&Pause", self.toggle_pause, ("Ctrl+P", "Space"),
                                         "Pause or resume training", sp.SP_MediaPause)
        self.stop_action = self._action("&Stop", self.stop_training, ("Ctrl+.",),
                                        "Stop training and save the run", sp.SP_MediaStop)
        self.import_action = self._action("&Import experiment…", self.import_experiment_dialog, ("Ctrl+O",),
                                          "Load an experiment (TOML) into the panels")
        self.export_action = self._action("&Export experiment…", self.export_experiment_dialog, ("Ctrl+S",),
                                          "Save the experiment as TOML for `workbench train --config`")
        self.quit_action = self._action("&Quit", self.close, ("Ctrl+Q",), "Quit the workbench")
        self.shortcuts_action = self._action("&Keyboard shortcuts", self.show_shortcuts, ("Ctrl+/",),
                                             "List the keyboard shortcuts")
        self.about_action = self._action("&About", self.show_about, (), "Versions of the workbench, torch and Qt")
        self.reset_layout_action = self._action("Reset &layout", self.reset_layout, (),
                                                "Put the panels back where they started")
        self.kind_action = self._action("Choose the experiment &kind…", self.choose_kind, ("Ctrl+K",),
                                        "Pick what kind of problem the experiment learns")
        self.plugins_action = self._action("&Plugins…", self.show_plugins, ("Ctrl+Shift+P",),
                                           "The installed plugins and what they add")
        self.sweep_action = self._action("S&weep…", self.open_sweep_dialog, ("Ctrl+Shift+S",),
                                         "Set up a hyperparameter study of the current experiment",
                                         sp.SP_FileDialogDetailedView)
        # Greyed while the window's contents are still being built (Quit and the help dialogs work at once).
        self._actions_after_startup = [self.run_action, self.pause_action, self.stop_action, self.import_action,
                                       self.export_action, self.reset_layout_action, self.kind_action,
                                       self.sweep_action]

        toolbar = QToolBar("Training")
        toolbar.setObjectName("trainingToolbar")
        toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        toolbar.setMovable(False)
        for action in (self.run_action, self.pause_action, self.stop_action, self.sweep_action):
            toolbar.addAction(action)
        self.run_hint = QLabel()
        self.run_hint.setObjectName("runHint")
        self.run_hint.setContentsMargins(12, 0, 0, 0)
        toolbar.addWidget(self.run_hint)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)
        self.toolbar = toolbar

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.import_action)
        file_menu.addAction(self.export_action)
        curves = file_menu.addMenu("Export &curves")
        curves.addAction("Image (PNG)…", lambda: self.training_view._export_dialog("png"))
        curves.addAction("Vector image (SVG)…", lambda: self.training_view._export_dialog("svg"))
        curves.addAction("Data (CSV)…", lambda: self.training_view._export_dialog("csv"))
        self._actions_after_startup.append(curves.menuAction())
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)

        run_menu = menu.addMenu("&Training")
        for action in (self.run_action, self.pause_action, self.stop_action):
            run_menu.addAction(action)
        run_menu.addSeparator()
        run_menu.addAction(self.sweep_action)

        view_menu = menu.addMenu("&View")
        view_menu.addAction(self.kind_action)
        view_menu.addSeparator()
        view_menu.addAction(self.kind_dock.toggleViewAction())
        view_menu.addAction(self.dataset_dock.toggleViewAction())
        view_menu.addAction(self.algorithm_dock.toggleViewAction())
        view_menu.addAction(self.toolbar.toggleViewAction())
        theme_menu = view_menu.addMenu("&Theme")
        self.theme_actions: dict[str, QAction] = {}
        group = QActionGroup(self)
        for preference, title in (("system", "Follow the system"), ("light", "Light"), ("dark", "Dark")):
            action = theme_menu.addAction(title)
            action.setCheckable(True)
            action.setChecked(preference == self.theme_preference)
            action.triggered.connect(lambda *_, p=preference: self.set_theme(p))
            group.addAction(action)
            self.theme_actions[preference] = action
        view_menu.addSeparator()
        view_menu.addAction(self.reset_layout_action)

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.shortcuts_action)
        help_menu.addAction(self.plugins_action)
        help_menu.addAction(self.about_action)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.status_progress = QProgressBar()
        self.status_progress.setObjectName("statusProgress")
        self.status_progress.setMaximumWidth(180)
        self.status_progress.setTextVisible(False)
        self.status_progress.hide()
        self.status_rate = QLabel()
        self.status_rate.setObjectName("statusRate")
        bar.addPermanentWidget(self.status_rate)
        bar.addPermanentWidget(self.status_progress)

    # --- settings ---------------------------------------------------------------------------
    def _restore_layout(self) -> None:
        """The saved geometry (kept on the screen) and dock layout."""
        geometry = self.settings.window_geometry()
        if geometry is not None and self.restoreGeometry(geometry):
            screen = self.screen() or QGuiApplication.primaryScreen()
            if screen is not None:
                self.setGeometry(fit_to_screen(self.geometry(), screen.availableGeometry()))
        state = self.settings.window_state()
        if state is not None:
            self._layout_restored = self.restoreState(state)

    def _restore_settings(self) -> None:
        from workbench.core.config import ExperimentConfig
        from workbench.core.kinds import DEFAULT_KIND

        if self.runs_view is not None and hasattr(self.runs_view, "restore_state"):
            self.runs_view.restore_state(self.settings.qsettings)
        self.set_kind(self.settings.kind() or DEFAULT_KIND)  # kept even when the experiment cannot be restored
        text = self.settings.last_experiment_toml()
        if text:
            try:
                self.apply_config(ExperimentConfig.from_toml(text, source="the last experiment"))
            except (WorkbenchError, ValueError) as exc:
                # An experiment from an older version: start from defaults and say so.
                self.statusBar().showMessage(f"The last experiment could not be restored ({exc}); using defaults.",
                                             10000)
        self.algorithm_panel.set_processes(self.settings.processes())  # after the device, which bounds it

    def save_settings(self) -> None:
        if not self.is_ready:
            return  # closed while starting: the panels hold nothing worth saving
        self.settings.save_window(self.saveGeometry(), self.saveState())
        try:
            self.settings.save_experiment_toml(self.current_config().to_toml())
        except (WorkbenchError, ValueError):
            pass  # an invalid experiment is not worth restoring
        self.settings.save_theme(self.theme_preference)
        self.settings.save_kind(self.kind_panel.kind_name())
        if self.runs_view is not None and hasattr(self.runs_view, "save_state"):
            self.runs_view.save_state(self.settings.qsettings)
        self.settings.sync()

    def reset_layout(self) -> None:
        if self._default_state is not None:
            self.restoreState(self._default_state)
        for dock in (self.kind_dock, self.dataset_dock, self.algorithm_dock):
            dock.show()
            dock.setFloating(False)
        self._size_docks()
        self.dataset_dock.raise_()

    # --- theme ------------------------------------------------------------------------------
    def set_theme(self, preference: str) -> None:
        self.theme_preference = preference if preference in themes.THEME_CHOICES else "system"
        if self.theme_preference in self.theme_actions:
            self.theme_actions[self.theme_preference].setChecked(True)
        self._apply_theme_now()

    def _on_system_scheme_changed(self, *_args) -> None:
        if self.theme_preference == "system":
            self._apply_theme_now()

    def _apply_theme_now(self) -> None:
        self.theme = themes.resolve(self.theme_preference)
        app = QApplication.instance()
        if app is not None:
            themes.apply(app, self.theme)
        if not hasattr(self, "dataset_panel"):
            return  # starting: the panels and views take the theme when they are built
        self.dataset_panel.set_theme(self.theme)
        for widget in self.all_views():
            if hasattr(widget, "apply_theme"):
                widget.apply_theme(self.theme)
        self.theme_changed.emit(self.theme)
        if hasattr(self, "run_hint"):
            self._show_run_hint()

    # --- the experiment ---------------------------------------------------------------------
    def kind_name(self) -> str:
        return self.kind_panel.kind_name()

    def set_kind(self, name: str) -> bool:
        """Choose the experiment kind (the panels then offer its datasets and algorithms, defaults chosen)."""
        return self.kind_panel.set_kind(name)

    def choose_kind(self) -> None:
        self.kind_dock.show()
        self.kind_panel.combo.setFocus(Qt.FocusReason.ShortcutFocusReason)
        self.kind_panel.combo.showPopup()

    def _on_kind_changed(self, name: str) -> None:
        if self._shown_once:  # the new kind's settings shown whole, once its form is laid out
            QTimer.singleShot(0, self._fit_kind_dock)
        self.dataset_panel.set_kind(name)
        self.algorithm_panel.set_kind(name, self.dataset_panel.dataset_name())
        if not self.training_view.has_data() and not self.controller.is_running:
            self.training_view.set_metric(_metric_key(name))  # empty curves are labelled for this kind
        self._update_tabs()
        self.kind_changed.emit(name)

    def _apply_recipe(self, recipe) -> None:
        """The dataset and kind fields of a recipe the algorithm panel applied (it fills its own)."""
        sections = recipe.sections()
        if sections["dataset"]:
            self.dataset_panel.set_values({**self.dataset_panel.values(), **sections["dataset"]})
        if sections["task"]:
            self.kind_panel.set_options({**self.kind_panel.options(), **sections["task"]})

    def current_config(self) -> ExperimentConfig:
        """The ONE function that turns the panels into an ExperimentConfig (raises ConfigError)."""
        from workbench.core.config import ExperimentConfig
        from workbench.core.kinds import get_kind_class

        algorithm = self.algorithm_panel
        kind = self.kind_panel.kind_name()
        if algorithm.algorithm_name() is None:
            title = get_kind_class(kind).title
            raise ConfigError("algorithm.name", f"no installed algorithm supports {title[:1].lower() + title[1:]}")
        return ExperimentConfig.from_dict({
            "name": algorithm.run_name(),
            "kind": kind,
            "task": self.kind_panel.options(),
            "dataset": self.dataset_panel.values(),
            "algorithm": {"name": algorithm.algorithm_name(), "hparams": algorithm.hparams(),
                          "recipe": algorithm.recipe_name()},
            "training": algorithm.training_values(),
            "evaluation": algorithm.evaluation_values(),
        })

    def apply_config(self, config: ExperimentConfig) -> None:
        """Fill the panels from a config (File > Import, last experiment, resumed run)."""
        from workbench.core.hparams import to_dict

        if not self.set_kind(config.kind):
            raise ConfigError("kind", f"the experiment kind '{config.kind}' is not installed")
        self.kind_panel.set_options(config.task)
        self.dataset_panel.set_values(to_dict(config.dataset))
        self.algorithm_panel.set_config(config)
        self.revalidate()

    def export_experiment(self, path: str | Path) -> Path:
        return self.current_config().save(path)

    def import_experiment(self, path: str | Path) -> ExperimentConfig:
        from workbench.core.config import ExperimentConfig

        config = ExperimentConfig.load(path)
        self.apply_config(config)
        self.statusBar().showMessage(f"Imported the experiment from {path}.", 8000)
        return config

    def export_experiment_dialog(self) -> None:
        try:
            config = self.current_config()
        except WorkbenchError as exc:
            self.report_error("Cannot export the experiment", f"The experiment is not valid: {exc}")
            return
        start = self.settings.last_folder("experiments") or str(Path.home())
        name = (config.name or f"{config.algorithm.name}-{config.dataset.name}") + ".toml"
        path, _ = QFileDialog.getSaveFileName(self, "Export experiment", str(Path(start) / name),
                                              "Experiment (*.toml)")
        if not path:
            return
        try:
            self.export_experiment(path)
        except (OSError, WorkbenchError) as exc:
            self.report_error("Cannot export the experiment", f"Writing {path} failed: {exc}")
            return
        self.settings.save_folder("experiments", str(Path(path).parent))
        self.statusBar().showMessage(f"Saved the experiment to {path}; run it with "
                                     f"`workbench train --config {path}`.", 10000)

    def import_experiment_dialog(self) -> None:
        start = self.settings.last_folder("experiments") or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Import experiment", start, "Experiment (*.toml);;All files (*)")
        if not path:
            return
        try:
            self.import_experiment(path)
        except (WorkbenchError, ValueError) as exc:
            self.report_error("Cannot import the experiment", str(exc))
            return
        self.settings.save_folder("experiments", str(Path(path).parent))

    # --- validation -------------------------------------------------------------------------
    def revalidate(self) -> str | None:
        """Check the experiment; disable Run and say why when it cannot train. Returns the reason or None."""
        from workbench.core.config import recipe_changes

        reason, episode_problem = None, None
        try:
            config = self.current_config()
        except WorkbenchError as exc:
            config, reason = None, str(exc)
        panel = self.dataset_panel
        if reason is None:
            if panel.is_loading:
                reason = "the dataset is loading"
            elif panel.load_error:
                reason = panel.load_error
            elif not panel.is_ready():
                reason = "the dataset is not loaded yet"
            else:
                episode_problem = self._episode_problem(config)
                reason = episode_problem or self._parallel_problem(config, self.algorithm_panel.processes())
        panel.show_episode_problem(episode_problem)
        self.algorithm_panel.show_recipe_changes(recipe_changes(config) if config is not None else [])
        self._update_tabs()
        self.run_blocked_reason = reason
        if reason and self.statusBar().currentMessage().startswith("Ready"):
            self.statusBar().clearMessage()  # "press Run" would contradict the disabled button
        elif reason is None and not self._greeted:
            self._greeted = True
            self.statusBar().showMessage("Ready: the experiment can run; press Run (Ctrl+R) to meta-train.")
        self._update_actions()
        return reason

    def _episode_problem(self, config: ExperimentConfig) -> str | None:
        from workbench.core.algorithms import get_algorithm
        from workbench.core.data import check_episode_setting

        if not self.dataset_panel.has_episodes():
            return None  # tasks of points or functions: nothing to draw from classes
        dataset = self.dataset_panel.dataset
        checks = []
        algorithm_cls = get_algorithm(config.algorithm.name)
        if algorithm_cls.training_input_for(algorithm_cls.build_hparams(config.algorithm.hparams)) == "episodes":
            overridden = (config.training.train_ways, config.training.train_shots, config.training.train_queries)
            prefix = "Training episodes (train ways/shots/queries): " if any(overridden) else ""
            checks.append(("train", config.train_ways, config.train_shots, config.train_queries, prefix))
        for split in ("val", "test"):
            checks.append((split, config.dataset.ways, config.dataset.shots, config.dataset.queries, ""))
        for split, ways, shots, queries, prefix in checks:
            try:
                check_episode_setting(dataset.splits[split], ways, shots, queries, split, dataset.name)
            except EpisodeError as exc:
                return prefix + str(exc)
        return None

    @staticmethod
    def _parallel_problem(config: ExperimentConfig, nproc: int) -> str | None:
        """Why ``config`` cannot train in ``nproc`` processes (told before any starts), or None."""
        from workbench.core.training.distributed import check_parallel

        try:
            check_parallel(config, nproc, per_host=nproc)
        except WorkbenchError as exc:
            return f"{exc} (Processes: {nproc})"
        return None

    def _update_actions(self) -> None:
        state = self.controller.state
        busy = state != "idle"
        self.run_action.setEnabled(not busy and self.run_blocked_reason is None)
        can_pause = self.controller.can_pause
        self.pause_action.setEnabled(state in ("running", "paused", "loading") and can_pause)
        self.pause_action.setToolTip("Pause or resume training (Ctrl+P)" if can_pause else
                                     f"Pause is not available while {self.controller.processes} processes train "
                                     "together; Stop saves the run, and Resume in the Runs tab continues it")
        self.stop_action.setEnabled(busy and state != "stopping")
        paused = state == "paused"
        self.pause_action.setText("&Resume" if paused else "&Pause")
        self.pause_action.setIcon(self.style().standardIcon(
            QStyle.StandardPixmap.SP_MediaPlay if paused else QStyle.StandardPixmap.SP_MediaPause))
        self._show_run_hint()

    def _show_run_hint(self) -> None:
        state = self.controller.state
        if state != "idle":
            text = {"loading": "Preparing…", "running": "Training…", "paused": "Paused",
                    "stopping": "Stopping after this step…"}.get(state, "")
            self.run_hint.setText(text)
            self.run_hint.setToolTip("")
            self.run_action.setToolTip("Start meta-training (Ctrl+R)")
            return
        reason = self.run_blocked_reason
        if reason:
            if reason == self.dataset_panel.episode_problem_text:
                short = "this n-way / k-shot / q-query setting is impossible; see the Dataset panel"
            else:
                short = reason if len(reason) <= 90 else reason[:87] + "…"
            self.run_hint.setText(f"<span style='color:{self.theme.error_text}'>Cannot run: {short}</span>")
            self.run_hint.setToolTip(reason)
            self.run_action.setToolTip(f"Cannot run: {reason}")
        else:
            self.run_hint.setText("")
            self.run_hint.setToolTip("")
            self.run_action.setToolTip("Start meta-training (Ctrl+R)")

    # --- training ---------------------------------------------------------------------------
    def start_training(self, config: ExperimentConfig | None = None) -> int | None:
        """Start meta-training the current experiment in the background; returns the job id."""
        if self.controller.is_running:
            return None
        if config is None:
            if self.revalidate() is not None:
                self.statusBar().showMessage(f"Cannot run: {self.run_blocked_reason}", 10000)
                return None
            try:
                config = self.current_config()
            except WorkbenchError as exc:
                self.report_error("Cannot start training", str(exc))
                return None
        return self._start_job(config, None, self._job_title(config))

    def resume_run(self, run_id: str) -> int | None:
        """Continue a stopped run from its last checkpoint, with its saved config."""
        if self.controller.is_running:
            self.report_error("Training is running", "Stop the current training before resuming another run.")
            return None
        try:
            run = self.store.get(run_id)
            config = run.config
            name = run.record().name or run_id
            history = run.read_metrics()
        except WorkbenchError as exc:
            self.report_error("Cannot resume the run", str(exc))
            return None
        return self._start_job(None, run_id, f"Resuming {name}: " + self._job_title(config), config, history)

    def _start_job(self, config, resume: str | None, title: str, shown_config=None, history=None) -> int | None:
        from workbench.core.kinds import get_kind_class

        home = getattr(self.store, "home", None)
        shown = config or shown_config
        nproc = self.algorithm_panel.processes()
        problem = self._parallel_problem(shown, nproc)
        if problem:
            self.report_error("Cannot train in several processes", problem)
            return None
        job_id = self.controller.start(config, home, resume=resume, nproc=nproc)
        total = shown.training.steps
        self._show_run_of(shown, "trained")
        self.training_view.begin_job(job_id, title, total, history=history,
                                     metric=get_kind_class(shown.kind).metric.key)
        self.status_progress.setRange(0, 0)
        self.status_progress.show()
        self.status_rate.setText("")
        self.statusBar().showMessage("Preparing the dataset and the model…")
        self.show_view("Training")
        return job_id

    @staticmethod
    def _job_title(config: ExperimentConfig) -> str:
        from workbench.core.algorithms import get_algorithm

        cls = get_algorithm(config.algorithm.name)
        d = config.dataset
        return (f"{cls.title} on {d.name}: {_task_text(config.kind, d.ways, d.shots)}, "
                f"{config.training.steps:,} steps (seed {config.training.seed})")

    def open_sweep_dialog(self) -> None:
        """Training > Sweep…: a hyperparameter study of the current experiment, run in the Studies tab."""
        try:
            config = self.current_config()
        except WorkbenchError as exc:
            self.report_error("Cannot set up a sweep", f"The experiment is not valid: {exc}")
            return
        self._last_dialog = self.studies_view.sweep_dialog(config, self)

    def toggle_pause(self) -> None:
        if self.controller.is_running:
            self.controller.toggle_pause()
            paused = self.controller.is_paused
            self.statusBar().showMessage("Paused; press Resume (Ctrl+P) to continue." if paused else "Resumed.")

    def stop_training(self) -> None:
        if self.controller.is_running:
            self.controller.stop()
            self.statusBar().showMessage("Stopping after the current meta-step; the run will be saved…")

    def _on_job_started(self, job_id: int, info: dict) -> None:
        self._active_run_id = info.get("run_id")
        name = info.get("run_name") or self._active_run_id
        self.statusBar().showMessage(f"Training run {name} on {info.get('device', '?')}." +
                                     (f" {info['message'][:1].upper()}{info['message'][1:]}." if info.get("message")
                                      else ""))
        self.run_store_changed.emit()  # views refresh their run lists (the Runs view marks the active run)
        self.training_started.emit(job_id, info)

    def _on_job_loading(self, job_id: int, done: int, total: int, message: str) -> None:
        self.training_view.set_loading(done, total, message)

    def _on_job_records(self, job_id: int, payload: dict) -> None:
        if not self.training_view.append(job_id, payload):
            return  # stale
        last = payload.get("last") or {}
        total, step = int(last.get("total_steps") or 0), int(last.get("step") or 0)
        if total:
            self.status_progress.setRange(0, total)
            self.status_progress.setValue(min(step, total))
        from workbench.gui.training_view import _format_duration

        rate = last.get("steps_per_s", math.nan)
        if isinstance(rate, float) and math.isfinite(rate) and last.get("event") == "step":
            self.status_rate.setText(f"{rate:.1f} steps/s · ETA {_format_duration(last.get('eta_s', math.nan))}")
        for event in payload.get("events") or []:
            message = str(event.get("message") or "")
            if event.get("event") == "validation" and message:
                self.statusBar().showMessage(message[:1].upper() + message[1:], 8000)
            elif event.get("event") == "warning" and message:  # e.g. a loss far above its start
                self.statusBar().showMessage(message[:1].upper() + message[1:])
                self.report_error("Training may be diverging", message[:1].upper() + message[1:], None, warning=True)
        self.training_records.emit(job_id, payload)

    def _on_job_finished(self, job_id: int, final: dict) -> None:
        self.last_final = dict(final)
        self.training_view.flush()
        event = final.get("event", "stopped")
        message = str(final.get("message") or "")
        self.status_progress.hide()
        self.status_rate.setText("")
        if event == "cancelled":
            self.training_view.progress.setRange(0, 1)
            self.training_view.progress.setFormat("cancelled")
        text = f"Run {FINAL_MESSAGES.get(event, event)}" + (f": {message}" if message else ".")
        self.statusBar().showMessage(text)
        if event == "diverged":
            self.report_error("Training diverged", message[:1].upper() + message[1:] + ". The app is ready for "
                              "another run.", None, warning=True)
        self._finish_job(job_id, final)

    def _on_job_failed(self, job_id: int, title: str, message: str, details: str) -> None:
        self.last_final = {"event": "failed", "message": message}
        self.status_progress.hide()
        self.status_rate.setText("")
        self.training_view.progress.setFormat("failed")
        self.statusBar().showMessage(f"{title}: {message}")
        self.report_error(title, message, details)
        self._finish_job(job_id, {"event": "failed", "message": message, "run_id": self._active_run_id})

    def _finish_job(self, job_id: int, final: dict) -> None:
        self._active_run_id = None
        self.revalidate()
        self.run_store_changed.emit()
        self.training_finished.emit(job_id, final)

    # --- runs -------------------------------------------------------------------------------
    def open_run(self, run_id: str) -> None:
        """Show a saved run's curves (as an overlay while another run trains)."""
        try:
            run = self.store.get(run_id)
            records = run.read_metrics()
            record = run.record()
            config = run.config
        except WorkbenchError as exc:
            self.report_error("Cannot open the run", str(exc))
            return
        name = record.name or run_id
        from workbench.core.kinds import DEFAULT_KIND

        kind = getattr(config, "kind", DEFAULT_KIND)
        self._show_run_of(config, "opened")
        if self.controller.is_running:
            self.training_view.add_overlay(name, records)
        else:
            self.training_view.load_metrics(
                records, title=f"Run {name}: {record.algorithm} on {record.dataset}, "
                f"{_task_text(kind, record.ways, record.shots)} ({record.status})",
                metric=_metric_key(kind))
        self.show_view("Training")

    def overlay_runs(self, run_ids: list, baseline_id: object = None) -> None:
        """Compare runs: their curves over the live ones while training, else on their own."""
        self.training_view.clear_overlays()
        if not self.controller.is_running:
            count = len(run_ids)
            self.training_view.load_metrics([], title=f"Comparing {count} run{'s' if count != 1 else ''}"
                                            + (" (dashed: the pinned baseline)" if baseline_id else ""))
        for run_id in run_ids:
            try:
                run = self.store.get(run_id)
                name = run.record().name or run_id
                self.training_view.add_overlay(name, run.read_metrics(), pinned=run_id == baseline_id)
            except WorkbenchError as exc:
                self.statusBar().showMessage(f"Cannot overlay {run_id}: {exc}", 8000)
        self.show_view("Training")

    # --- dialogs ----------------------------------------------------------------------------
    def report_error(self, title: str, message: str, details: str | None = None, warning: bool = False) -> None:
        """A readable dialog; the traceback (if any) sits behind its details button. Never blocks a test."""
        self.last_error = (title, message, details)
        dialogs = _dialogs()
        if dialogs is not None and not warning:
            dialogs.show_error(self, title, message, details)
            return
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning if warning else QMessageBox.Icon.Critical)
        box.setWindowTitle(title)
        box.setText(message)
        if details:
            box.setDetailedText(details)
        box.open()  # non-blocking: training signals keep flowing

    def show_shortcuts(self) -> None:
        dialogs = _dialogs()
        if dialogs is None:
            return
        actions = list(self.actions())
        runs_view = getattr(self, "runs_view", None)  # None while the window is starting
        if runs_view is not None and hasattr(runs_view, "run_actions"):
            actions += list(runs_view.run_actions())
        dialog = dialogs.ShortcutsDialog(actions, self)
        dialog.open()
        self._last_dialog = dialog

    def show_plugins(self) -> None:
        """Help > Plugins: what each installed plugin adds, and the errors of broken ones."""
        try:
            from workbench.gui.plugins_dialog import show_plugins_dialog
        except ImportError as exc:
            self.statusBar().showMessage(f"The plugins dialog is not available: {exc}", 8000)
            return
        self._last_dialog = show_plugins_dialog(self)

    def show_status(self, text: str, timeout_ms: int = 8000) -> None:
        """A view's one-line message in the status bar."""
        self.statusBar().showMessage(text, timeout_ms)

    def show_about(self) -> None:
        dialogs = _dialogs()
        if dialogs is None:
            return
        dialog = dialogs.AboutDialog(self)
        dialog.open()
        self._last_dialog = dialog

    # --- closing ----------------------------------------------------------------------------
    def _ask_stop_on_close(self) -> bool:
        if self.confirm_stop_on_close is not None:
            return bool(self.confirm_stop_on_close())
        answer = QMessageBox.question(
            self, "Training is running",
            "A run is training. Stop it and quit? The run is saved as stopped and can be resumed from the Runs tab.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def shutdown(self) -> bool:
        """Stop training and every background task, joining their threads. True when all ended. (A window closed
        while starting builds nothing more.)"""
        self._steps = None
        ok = True
        controller = getattr(self, "controller", None)
        if controller is not None and (controller.is_running or controller.has_threads):
            self.statusBar().showMessage("Stopping training and saving the run…")
            QApplication.processEvents()
            ok = controller.shutdown() and ok
        if hasattr(self, "dataset_panel"):
            ok = self.dataset_panel.shutdown() and ok
        for view in self.all_views():  # every view that runs background work joins its threads here
            if hasattr(view, "shutdown"):
                ok = view.shutdown() is not False and ok
        return ok

    def closeEvent(self, event) -> None:
        if self.is_ready and self.controller.is_running and not self._ask_stop_on_close():
            event.ignore()
            return
        self.save_settings()
        self.shutdown()
        event.accept()
