"""The GUI with plugins installed (examples/plugin through a dist-info folder, plus three broken plugins): the
window starts, its panels offer the plugin's algorithm and dataset, and the Plugins dialog lists every entry with
the errors of the broken ones."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QGuiApplication

from plugin_helpers import make_site, plugins_installed

BROKEN = ("explodes", "bad-default", "missing-hook")


@pytest.fixture
def installed(tmp_path):
    with plugins_installed(make_site(tmp_path, broken=True)):
        yield


def combo_texts(combo) -> list[str]:
    return [combo.itemText(i).strip() for i in range(combo.count())]


def test_the_window_starts_and_its_panels_offer_the_plugin(installed, make_window):
    window = make_window(auto_load=False)
    assert "Cosine centroids (example plugin)" in combo_texts(window.algorithm_panel.algorithm_combo)
    assert "Shapes (example plugin)" in combo_texts(window.dataset_panel.name_combo)
    assert not any(name in " ".join(combo_texts(window.algorithm_panel.algorithm_combo)).lower()
                   for name in ("bad default", "missing hook"))


def test_the_plugins_dialog_lists_every_entry_with_the_errors(installed, make_window, qtbot):
    from workbench.gui.plugins_dialog import PluginsDialog, plugin_problems_note

    window = make_window(auto_load=False)
    window.plugins_action.trigger()  # Help > Plugins…
    qtbot.waitUntil(lambda: window.findChild(PluginsDialog) is not None and window.findChild(PluginsDialog).isVisible())
    dialog = window.findChild(PluginsDialog)
    assert dialog.tree.topLevelItemCount() == 5
    assert dialog.status_of("cosine-centroids") == "OK" and dialog.status_of("shapes") == "OK"
    assert dialog.status_of("explodes") == "Error: import failed: RuntimeError: this plugin is broken on purpose"
    assert "4 is out of range" in dialog.status_of("bad-default")
    assert "does not implement embed()" in dialog.status_of("missing-hook")
    assert "5 plugin entries from 3 packages; 3 could not be loaded" in dialog.summary.text()
    # The first broken entry is selected, its traceback shown.
    assert dialog.tree.currentItem().text(0) in BROKEN
    assert "Traceback (most recent call last)" in dialog.details.toPlainText()
    dialog.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert all(f"'{name}'" in copied for name in (*BROKEN, "cosine-centroids", "shapes"))
    assert "raise RuntimeError" in copied
    note = plugin_problems_note()
    assert note.startswith("3 plugins could not be loaded") and "Help > Plugins" in note
    dialog.close()


def test_without_plugins_there_is_no_note_and_the_dialog_says_how_to_add_one(make_window, qtbot):
    from workbench.gui.plugins_dialog import plugin_problems_note, show_plugins_dialog

    assert plugin_problems_note() == ""
    dialog = show_plugins_dialog(make_window(auto_load=False))
    qtbot.waitUntil(dialog.isVisible)
    assert dialog.tree.topLevelItemCount() == 0
    assert "No plugins are installed" in dialog.summary.text() and "workbench.algorithms" in dialog.summary.text()
    dialog.close()
