"""Before Qt starts: is there a display, and are the system libraries of Qt's xcb plugin installed?

Qt's own text for a missing xcb library ("could not load the Qt platform plugin xcb", often naming
libxcb-cursor0 even when another library is the one missing) misleads, so this module asks `ldd` which
libraries the plugin cannot find and names them with their Debian/Ubuntu packages.

It is on the cold-start path: it imports no Qt module and no torch, and runs `ldd` only when Qt will use xcb.

    python -m workbench.gui.platform_check [--install] [--json] [--quiet] [--any-platform]

exits 0 when nothing is missing (or nothing could be checked), 3 when libraries are missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

EXIT_MISSING = 3
PLUGIN = Path("Qt", "plugins", "platforms", "libqxcb.so")

# Sonames Qt's xcb plugin needs (directly or through libQt6XcbQpa / libQt6Gui) -> Debian/Ubuntu package.
# Checked on Debian 12 with `dpkg -S` (installed ones) and `apt-cache show` (the package exists).
KNOWN_PACKAGES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xinerama.so.0": "libxcb-xinerama0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libxkbcommon.so.0": "libxkbcommon0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libEGL.so.1": "libegl1",
    "libGL.so.1": "libgl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libOpenGL.so.0": "libopengl0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libz.so.1": "zlib1g",
}

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$", re.MULTILINE)
_SONAME = re.compile(r"^(lib[A-Za-z0-9_.+-]+?)\.so\.(\d+)")


def find_plugin() -> Path | None:
    """PySide6's libqxcb.so, located without importing PySide6; None when PySide6 or the plugin is absent."""
    try:
        spec = importlib.util.find_spec("PySide6")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / PLUGIN
        if candidate.is_file():
            return candidate
    return None


def parse_ldd(output: str) -> list[str]:
    """The sonames `ldd` reports as "not found" (ldd lists the whole dependency closure), in order, once each."""
    return list(dict.fromkeys(_NOT_FOUND.findall(output)))


def run_ldd(path: Path) -> str | None:
    """`ldd path`'s output, or None when ldd is not available or fails (e.g. a musl system)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        done = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 or "not found" in done.stdout else None


def missing_xcb_libraries(plugin_path: Path | str | None = None, ldd_output: str | None = None) -> list[str]:
    """Sonames the xcb plugin needs that the system lacks; [] when all are there or nothing could be checked."""
    if ldd_output is None:
        path = Path(plugin_path) if plugin_path is not None else find_plugin()
        if path is None or not path.is_file():
            return []
        ldd_output = run_ldd(path)
        if ldd_output is None:
            return []
    return parse_ldd(ldd_output)


def package_for(soname: str) -> tuple[str | None, bool]:
    """(package, known): from KNOWN_PACKAGES, else guessed with Debian's library-package rule
    (libFoo.so.3 -> libfoo3, libfoo-2.so.1 -> libfoo-2-1); (None, False) when the name does not fit the rule."""
    if soname in KNOWN_PACKAGES:
        return KNOWN_PACKAGES[soname], True
    match = _SONAME.match(soname)
    if match is None:
        return None, False
    base, version = match.group(1).lower(), match.group(2)
    return f"{base}{'-' if base[-1].isdigit() else ''}{version}", False


def apt_packages(libraries: list[str]) -> list[str]:
    """The Debian/Ubuntu packages that provide these sonames (guessed for unknown ones), once each."""
    packages = (package_for(name)[0] for name in libraries)
    return list(dict.fromkeys(p for p in packages if p))


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install_command(packages: list[str], root: bool | None = None) -> str:
    """The exact apt-get command line (with sudo unless already root)."""
    sudo = "" if (is_root() if root is None else root) else "sudo "
    return f"{sudo}apt-get install -y {' '.join(packages)}"


def qt_platform(environ: Mapping[str, str]) -> str:
    """The platform plugin QT_QPA_PLATFORM names ("" when unset); "xcb:opts;wayland" -> "xcb"."""
    return environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0].strip().lower()


def may_use_xcb(environ: Mapping[str, str]) -> bool:
    """Qt would load the xcb plugin: asked for explicitly, or by default when no Wayland display is there."""
    platform = qt_platform(environ)
    return platform == "xcb" or (not platform and not environ.get("WAYLAND_DISPLAY"))


def library_report(missing: list[str], root: bool | None = None) -> str:
    """Lines naming the missing libraries, their packages and the command that installs them."""
    lines = ["Qt's xcb platform plugin (the one that draws windows on X11) needs system libraries that are missing:"]
    for name in missing:
        package, known = package_for(name)
        note = "" if known else (" (package name guessed from the library name)" if package
                                 else " (package unknown: find it with `apt-file search " + name + "`)")
        lines.append(f"  {name}  ->  {package or '?'}{note}")
    packages = apt_packages(missing)
    if packages:
        lines += ["Install them (Debian/Ubuntu) with:", f"  {install_command(packages, root)}"]
    return "\n".join(lines)


def no_display_message() -> str:
    return "\n".join([
        "The workbench cannot open its window: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set).",
        "Start it from a desktop session, or:",
        "  run with QT_QPA_PLATFORM=offscreen (no window; for scripts and screenshots):",
        "    QT_QPA_PLATFORM=offscreen workbench",
        "  or under Xvfb, a virtual display:",
        "    xvfb-run workbench        (Debian/Ubuntu: " + install_command(["xvfb", "xauth"]) + ")",
    ])


def startup_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why Qt would abort at start-up here, in plain words; None when nothing is wrong (or not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    environ = os.environ if environ is None else environ
    if not may_use_xcb(environ):
        return None
    if not environ.get("DISPLAY"):
        return no_display_message()
    missing = missing_xcb_libraries()
    if not missing:
        return None
    return (f"The workbench cannot open its window on the X11 display {environ.get('DISPLAY')}.\n"
            + library_report(missing) + "\nOr run without a window: QT_QPA_PLATFORM=offscreen workbench")


def apt_install(packages: list[str]) -> int:
    """`apt-get update && apt-get install -y packages`, non-interactive; apt-get's exit code."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(["apt-get", "update"], env=env, check=False)
    if update.returncode != 0:
        return update.returncode
    return subprocess.run(["apt-get", "install", "-y", *packages], env=env, check=False).returncode


def why_not_install() -> str | None:
    """Why --install cannot run apt-get here; None when it can (root, apt-get on PATH, WORKBENCH_NO_APT unset)."""
    if os.environ.get("WORKBENCH_NO_APT", "") not in ("", "0"):
        return "WORKBENCH_NO_APT is set"
    if not is_root():
        return "not running as root"
    if shutil.which("apt-get") is None:
        return "apt-get was not found (not Debian/Ubuntu?)"
    return None


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workbench.gui.platform_check",
                                     description="Check (and optionally install) the system libraries Qt's xcb "
                                                 "platform plugin needs. Exit code 3 when some are missing.")
    parser.add_argument("--install", action="store_true",
                        help="as root with apt-get: install the missing packages (set WORKBENCH_NO_APT=1 to forbid)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="print nothing when nothing is missing")
    parser.add_argument("--any-platform", action="store_true",
                        help="check even when Qt will not use xcb here (QT_QPA_PLATFORM=offscreen, Wayland)")
    return parser.parse_args(argv)


def _result(missing: list[str], note: str | None, installed: list[str]) -> dict:
    packages = apt_packages(missing)
    return {"checked": note is None, "note": note, "missing": missing, "packages": packages,
            "command": install_command(packages) if packages else None, "installed": installed}


def _print(result: dict, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(result, indent=2))
    elif result["missing"]:
        print(library_report(result["missing"]), file=sys.stderr)
    elif result["installed"]:
        print("Installed: " + " ".join(result["installed"]), file=sys.stderr)
    elif not args.quiet:
        print(result["note"] or "All the system libraries Qt's xcb platform plugin needs are installed.")


def _not_checked_note(path: Path | None, any_platform: bool) -> str | None:
    """Why the libraries are not checked here, or None when they are."""
    if not sys.platform.startswith("linux"):
        return "Not checked: only Linux uses Qt's xcb plugin."
    if not (any_platform or may_use_xcb(os.environ)):
        return "Not checked: Qt will not use the xcb plugin here (QT_QPA_PLATFORM or Wayland); --any-platform checks."
    if path is None:
        return "Not checked: PySide6's xcb plugin (Qt/plugins/platforms/libqxcb.so) was not found."
    if shutil.which("ldd") is None:
        return "Not checked: ldd is not available."
    return None


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    path = find_plugin()
    note = _not_checked_note(path, args.any_platform)
    missing = missing_xcb_libraries(path) if note is None else []
    installed: list[str] = []
    refusal = why_not_install() if missing and args.install else "not asked"
    if refusal is None:
        installed = apt_packages(missing)
        print("Installing the system libraries Qt's xcb plugin needs: " + " ".join(installed), file=sys.stderr)
        if apt_install(installed) != 0:
            print("apt-get failed; see its output above.", file=sys.stderr)
        missing = missing_xcb_libraries(path)
    _print(_result(missing, note, installed), args)
    if missing and args.install and refusal is not None and not args.json:
        print(f"Not installed automatically: {refusal}.", file=sys.stderr)
    return EXIT_MISSING if missing else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
