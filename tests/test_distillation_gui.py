"""The distilled images in the generic Mechanism view: followed live while a real (tiny) distillation run trains,
replayed with the scrubber from the saved run, and exported as PNG."""

from __future__ import annotations

import pytest

from test_distillation import distillation_config
from workbench.core.runs import RunStore
from workbench.core.training.trainer import Trainer
from workbench.gui import inspection_view
from workbench.gui.inspection_view import InspectionView

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_mechanism_view_follows_the_distilled_images_live_replays_and_exports_them(
        qtbot, use_synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(inspection_view, "RELOAD_SECONDS", 0.0)
    store = RunStore()
    view = InspectionView(store)
    qtbot.addWidget(view)
    view.resize(1100, 650)
    view.show()
    trainer = Trainer(distillation_config({"images_per_class": 2}), store)
    view.on_training_started(1, {"run_path": str(trainer.run.path)})
    assert view.showing_explanation and "(training)" in view.run_combo.currentText()
    validations = 0
    for record in trainer.steps():  # the trainer's records reach the view as the window forwards them
        view.on_training_records(1, [record])
        if record.event == "validation":
            validations += 1
            qtbot.waitUntil(lambda: not view.showing_explanation and view.slider.maximum() == validations - 1,
                            timeout=5000)
            assert view.slider.value() == validations - 1  # stays on the newest snapshot while training
    view.on_training_finished(1, {"event": "finished"})
    assert validations == 2 and "(training)" not in view.run_combo.currentText()
    assert view.record_titles() == ["Distilled images", "A real image per class", "Learned learning rates"]

    view.select_record("distilled_images")
    grid = view.current_panel()
    assert grid is view.panels["image_grid"] and grid.drawn_count() == 6  # 3 classes x 2 images
    view.step_by(-1)  # the scrubber: back to the first validation
    assert "step 3 (1/2)" in view.step_label.text() and grid.drawn_count() == 6
    view.grab().save(str(tmp_path / "mechanism-distilled.png"))
    path = view.export(tmp_path / "distilled.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    view.select_record("learning_rates")
    assert view.panels["curves"].drawn_count() == 1
