"""SVG export of pyqtgraph scenes, shared by the views that offer it."""

from __future__ import annotations

import sys
from pathlib import Path

import pyqtgraph.exporters


def export_svg(item, path: str | Path) -> None:
    """Write ``item`` (a scene or plot item) as SVG.

    pyqtgraph 0.14's SVG writer cannot parse the close-path "Z" segments Qt 6 emits for symbols (it expects
    "x,y" pairs only), so they are dropped while it rewrites coordinates; filled shapes close implicitly anyway.
    """
    module = sys.modules[pyqtgraph.exporters.SVGExporter.__module__]
    original = module.correctCoordinates

    def tolerant(node, defs, svg_item, options):
        for element in node.getElementsByTagName("path"):
            d = element.getAttribute("d")
            if "Z" in d or "z" in d:
                element.setAttribute("d", " ".join(p for p in d.split() if p not in ("Z", "z")))
        return original(node, defs, svg_item, options)

    module.correctCoordinates = tolerant
    try:
        pyqtgraph.exporters.SVGExporter(item).export(str(path))
    finally:
        module.correctCoordinates = original
