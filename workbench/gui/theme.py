"""Light and dark themes for widgets and plots; "system" follows the desktop's colour scheme."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

THEME_CHOICES = ("system", "light", "dark")


@dataclass(frozen=True)
class Theme:
    name: str  # "light" or "dark"
    plot_background: str
    plot_foreground: str
    grid_alpha: float
    train: str  # meta-train loss / accuracy
    validation: str
    band_alpha: int  # 0-255, for the CI band
    raw_alpha: int  # the unsmoothed curve drawn faintly underneath
    support: str  # frames of support thumbnails
    query: str
    error_text: str
    ok_text: str
    muted_text: str
    overlays: tuple[str, ...]  # colours of overlaid runs

    @property
    def is_dark(self) -> bool:
        return self.name == "dark"


LIGHT = Theme(
    name="light", plot_background="#ffffff", plot_foreground="#303030", grid_alpha=0.25,
    train="#1f6fd1", validation="#d9480f", band_alpha=60, raw_alpha=70,
    support="#1f6fd1", query="#e8590c", error_text="#c92a2a", ok_text="#2b8a3e", muted_text="#666666",
    overlays=("#7048e8", "#2f9e44", "#c2255c", "#1098ad", "#f08c00", "#495057"),
)
DARK = Theme(
    name="dark", plot_background="#1e1f22", plot_foreground="#d4d4d4", grid_alpha=0.2,
    train="#4dabf7", validation="#ffa94d", band_alpha=70, raw_alpha=80,
    support="#4dabf7", query="#ff922b", error_text="#ff8787", ok_text="#8ce99a", muted_text="#a0a0a0",
    overlays=("#b197fc", "#69db7c", "#f783ac", "#66d9e8", "#ffd43b", "#ced4da"),
)


def system_prefers_dark() -> bool:
    app = QGuiApplication.instance()
    if app is None:
        return False
    hints = QGuiApplication.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    if scheme is None:  # Qt < 6.5: guess from the window colour
        return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128
    return scheme() == Qt.ColorScheme.Dark


def resolve(preference: str) -> Theme:
    preference = preference if preference in THEME_CHOICES else "system"
    if preference == "system":
        return DARK if system_prefers_dark() else LIGHT
    return DARK if preference == "dark" else LIGHT


def dark_palette() -> QPalette:
    palette = QPalette()
    window, base, text = QColor("#2b2d30"), QColor("#1e1f22"), QColor("#dfe1e5")
    disabled = QColor("#7a7e85")
    for role, color in {
        QPalette.ColorRole.Window: window, QPalette.ColorRole.WindowText: text,
        QPalette.ColorRole.Base: base, QPalette.ColorRole.AlternateBase: QColor("#26282b"),
        QPalette.ColorRole.ToolTipBase: QColor("#3c3f41"), QPalette.ColorRole.ToolTipText: text,
        QPalette.ColorRole.PlaceholderText: disabled, QPalette.ColorRole.Text: text,
        QPalette.ColorRole.Button: QColor("#393b40"), QPalette.ColorRole.ButtonText: text,
        QPalette.ColorRole.BrightText: QColor("#ff6b6b"), QPalette.ColorRole.Link: QColor("#6ea8fe"),
        QPalette.ColorRole.Highlight: QColor("#2f65ca"), QPalette.ColorRole.HighlightedText: QColor("#ffffff"),
        QPalette.ColorRole.Light: QColor("#4a4d52"), QPalette.ColorRole.Midlight: QColor("#3c3f44"),
        QPalette.ColorRole.Mid: QColor("#303236"), QPalette.ColorRole.Dark: QColor("#1b1c1f"),
        QPalette.ColorRole.Shadow: QColor("#000000"),
    }.items():
        palette.setColor(role, color)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    return palette


def apply(app: QApplication, theme: Theme) -> None:
    """Style the whole application; plots created afterwards pick up the colours too (once pyqtgraph is loaded:
    it is not imported here, so the window can show before the plotting views load)."""
    app.setStyle("Fusion")  # the same look on every platform, and it honours palettes fully
    if theme.is_dark:
        app.setPalette(dark_palette())
    else:
        app.setPalette(app.style().standardPalette())
    if "pyqtgraph" in sys.modules:
        sys.modules["pyqtgraph"].setConfigOptions(background=theme.plot_background,
                                                  foreground=theme.plot_foreground, antialias=False)


def with_alpha(color: str, alpha: int) -> QColor:
    qcolor = QColor(color)
    qcolor.setAlpha(alpha)
    return qcolor


def blend(color: str, background: str, amount: float) -> QColor:
    """``color`` laid over ``background`` at opacity ``amount``, as one opaque colour."""
    top, bottom = QColor(color), QColor(background)
    mix = lambda a, b: round(a * amount + b * (1 - amount))  # noqa: E731
    return QColor(mix(top.red(), bottom.red()), mix(top.green(), bottom.green()), mix(top.blue(), bottom.blue()))
