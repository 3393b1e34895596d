"""The one way views become tabs of the main window.

A view class declares, as data: ``view_title`` (the tab's text), ``view_capability`` (one of
:data:`workbench.core.kinds.VIEW_CAPABILITIES`, the thing it shows; None: always shown, like the Runs list),
``view_order`` (left to right) and a classmethod ``for_window(window)`` that builds it and connects it, both ways,
to the window: to the window's signals (``training_started``, ``training_records``, ``training_finished``,
``run_store_changed``, ``theme_changed``, ``kind_changed``) and, where it has one, the Runs view's ``open_run``
(``window.runs_view`` is set before views of a higher ``view_order`` are built); and its own requests to the
window's slots (``open_run``, ``overlay_runs``, ``resume_run``, ``show_status``, ``run_store_changed.emit``).
The window sets ``window.<class name in snake case>`` (``window.runs_view``, ``window.fit_view``, ...) to each
built view.

The main window builds its tabs from :func:`view_classes`. A tab is enabled when the experiment kind in the setup
lists the view's capability (and, for capabilities an algorithm feeds, when the chosen algorithm declares it), or
when the run the user opened does; otherwise it is greyed and says which kinds and algorithms feed it
(:func:`explanation`, from :func:`workbench.core.catalog.feeders`). Views that share a title (the image and the
point "Try a task") share one tab, a :class:`ViewTab` that shows the page of the current kind; the tab scrolls when
the window is smaller than that page, so no view sets the window's minimum size.

A new view is one module listed in ``VIEW_MODULES`` whose class is decorated with :func:`register_view`.
"""

from __future__ import annotations

import html
import importlib
import re

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QFrame, QLabel, QScrollArea, QStackedWidget, QWidget

VIEW_MODULES = ("training_view", "runs_view", "try_view", "evaluation_view", "adaptation_view",
                "projector_view", "weights_view", "fit_view", "try_points_view", "inspection_view", "try_race_view",
                "studies_view")

_VIEWS: list[type] = []


def register_view(cls: type) -> type:
    for attribute in ("view_title", "view_capability", "view_order", "for_window"):
        if not hasattr(cls, attribute):
            raise TypeError(f"view {cls.__name__} does not declare '{attribute}'")
    if cls not in _VIEWS:
        _VIEWS.append(cls)
    return cls


def view_classes() -> list[type]:
    """Every registered view class, in tab order."""
    for module in VIEW_MODULES:
        importlib.import_module(f"workbench.gui.{module}")
    return sorted(_VIEWS, key=lambda cls: (cls.view_order, cls.view_title))


def attribute_name(cls: type) -> str:
    """The window attribute a built view is kept under: its class name in snake case (``RunsView`` ->
    ``runs_view``, ``TryPointsView`` -> ``try_points_view``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


# --- when a view applies ------------------------------------------------------------------------------------
def algorithm_fed(capability: str | None) -> bool:
    """Whether an algorithm must declare the capability (embeddings, adaptation, sample weights)."""
    from workbench.core.algorithms.base import HOOKS

    return capability in HOOKS


def _kind_class(kind: str | None):
    from workbench.core.errors import WorkbenchError
    from workbench.core.kinds import get_kind_class

    try:
        return get_kind_class(kind) if kind else None
    except WorkbenchError:
        return None


def _algorithm_class(name: str | None):
    from workbench.core.algorithms import get_algorithm
    from workbench.core.errors import WorkbenchError

    try:
        return get_algorithm(name) if name else None
    except WorkbenchError:
        return None


def shows(kind_cls, capability: str) -> bool:
    """The kind lists the view's capability, or, for a "Try a task" page of a mode (capability ``try_<mode>``),
    names that mode as its ``try_task``."""
    return capability in kind_cls.views or bool(kind_cls.try_task) and capability == f"try_{kind_cls.try_task}"


def applies(capability: str | None, kind: str | None, algorithm: str | None) -> bool:
    """A view of ``capability`` has something to show for this kind and algorithm."""
    if capability is None:
        return True
    kind_cls = _kind_class(kind)
    if kind_cls is None or not shows(kind_cls, capability):
        return False
    if not algorithm_fed(capability):
        return True
    algorithm_cls = _algorithm_class(algorithm)
    return algorithm_cls is not None and algorithm_cls.has(capability)


def _sentence_case(title: str) -> str:
    """"Few-shot classification" -> "few-shot classification" inside a sentence (acronyms stay)."""
    return title[:1].lower() + title[1:] if title[1:2].islower() else title


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""


def feeders_text(capability: str) -> str:
    """"Shown for few-shot classification and classification under label noise; fed by Meta-Weight-Net." """
    from workbench.core.catalog import feeders

    fed = feeders(capability)
    if not fed["kinds"]:  # a try mode named by try_task rather than listed among the views
        from workbench.core.kinds import get_kind_class, kind_names

        fed["kinds"] = [get_kind_class(n).title for n in kind_names() if shows(get_kind_class(n), capability)]
    kinds = _joined([_sentence_case(title) for title in fed["kinds"]])
    text = f"Shown for {kinds}" if kinds else "No installed experiment kind shows it"
    if algorithm_fed(capability):
        algorithms = _joined(fed["algorithms"])
        text += f"; fed by {algorithms}" if algorithms else "; no installed algorithm feeds it"
    return text + "."


def why_not(capability: str, kind: str | None, algorithm: str | None) -> str:
    """Why a view of ``capability`` has nothing to show for this kind and algorithm (one sentence)."""
    kind_cls = _kind_class(kind)
    if kind_cls is None:
        return "No experiment kind is chosen."
    if not shows(kind_cls, capability):
        return f"{kind_cls.title} does not use this view."
    algorithm_cls = _algorithm_class(algorithm)
    if algorithm_cls is None:
        return "No algorithm is chosen."
    return f"{algorithm_cls.title} does not feed this view."


def explanation(capability: str, kind: str | None, algorithm: str | None) -> str:
    """The tooltip of a disabled tab: why, then which kinds and algorithms feed it."""
    return f"{why_not(capability, kind, algorithm)} {feeders_text(capability)}"


class _PageStack(QStackedWidget):
    """A stack whose size hints are those of the page shown: a wide hidden page (the image "Try a task" beside the
    point one) must not make the shown one scroll."""

    def _page_hint(self, hint: str) -> QSize:
        widget = self.currentWidget()
        return getattr(widget, hint)().expandedTo(widget.minimumSize()) if widget is not None else QSize(0, 0)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return self._page_hint("minimumSizeHint")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt's name)
        return self._page_hint("sizeHint")


class ViewTab(QScrollArea):
    """One tab: a page per view sharing its title, plus a placeholder saying why none applies. The tab scrolls when
    the window is smaller than the page's minimum size, so no view forces the window's size."""

    def __init__(self, title: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.setObjectName(f"{title.lower().replace(' ', '_')}_tab")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.stack = _PageStack()
        self.stack.currentChanged.connect(lambda _: self.stack.updateGeometry())
        self.setWidget(self.stack)
        self.entries: list[tuple[str | None, QWidget]] = []
        self.placeholder = QLabel()
        self.placeholder.setObjectName("viewPlaceholder")
        self.placeholder.setWordWrap(True)
        self.placeholder.setTextFormat(Qt.TextFormat.RichText)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.placeholder.setContentsMargins(24, 24, 24, 24)
        self.stack.addWidget(self.placeholder)
        self.applicable = True

    def currentWidget(self) -> QWidget:  # noqa: N802 (the stack's API)
        return self.stack.currentWidget()

    def setCurrentWidget(self, widget: QWidget) -> None:  # noqa: N802 (the stack's API)
        self.stack.setCurrentWidget(widget)

    def add_view(self, capability: str | None, view: QWidget) -> None:
        self.entries.append((capability, view))
        self.stack.insertWidget(len(self.entries) - 1, view)
        if len(self.entries) == 1:
            self.setCurrentWidget(view)

    def current_view(self) -> QWidget:
        """The page shown (the first view while the placeholder is up)."""
        widget = self.currentWidget()
        return widget if widget is not self.placeholder else self.entries[0][1]

    def view_for(self, capability: str) -> QWidget | None:
        return next((view for cap, view in self.entries if cap == capability), None)

    def choose(self, contexts: list[tuple[str | None, str | None]]) -> str:
        """Show the first view that applies to one of the (kind, algorithm) contexts, in order; returns "" or,
        when none applies, the explanation (also shown on the placeholder page)."""
        for kind, algorithm in contexts:
            for capability, view in self.entries:
                if applies(capability, kind, algorithm):
                    self.setCurrentWidget(view)
                    self.applicable = True
                    return ""
        kind, algorithm = contexts[0] if contexts else (None, None)
        lines = [explanation(capability, kind, algorithm) for capability, _ in self.entries if capability]
        self.placeholder.setText(f"<h3>{html.escape(self.title)}</h3>" +
                                 "".join(f"<p>{html.escape(line)}</p>" for line in dict.fromkeys(lines)) +
                                 "<p>Choose such a kind and algorithm in the setup, or open such a run in the "
                                 "Runs view.</p>")
        self.setCurrentWidget(self.placeholder)
        self.applicable = False
        return " ".join(dict.fromkeys(lines))
