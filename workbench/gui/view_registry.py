"""The one way views become tabs of the main window.

A view class declares, as data: ``view_title`` (the tab's text), ``view_capability`` (one of
:data:`workbench.core.kinds.VIEW_CAPABILITIES`, the thing it shows), ``view_order`` (left to right) and a
classmethod ``for_window(window)`` that builds it and connects it to the window's signals
(``training_started``, ``training_records``, ``training_finished``, ``run_store_changed``, ``theme_changed``,
``kind_changed``) and, where it has one, the Runs view's ``open_run``.

The main window builds its tabs from :func:`view_classes`. A tab is enabled when the experiment kind in the setup
lists the view's capability (and, for capabilities an algorithm feeds, when the chosen algorithm declares it);
otherwise it says which kinds and algorithms feed it (:func:`workbench.core.catalog.feeders`). Views that share a
title (the image and the point "Try a task") share one tab, which shows the page of the current kind.

A new view is one module listed in ``VIEW_MODULES`` whose class is decorated with :func:`register_view`.
"""

from __future__ import annotations

import importlib

VIEW_MODULES = ("training_view", "runs_view", "try_view", "evaluation_view", "adaptation_view",
                "projector_view", "weights_view", "fit_view", "try_points_view")

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
        try:
            importlib.import_module(f"workbench.gui.{module}")
        except ModuleNotFoundError as exc:  # a view module not written yet
            if exc.name != f"workbench.gui.{module}":
                raise
    return sorted(_VIEWS, key=lambda cls: (cls.view_order, cls.view_title))
