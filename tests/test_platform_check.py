"""First launch on a fresh machine: the display check and the xcb library check (workbench.gui.platform_check)
and packaging/bootstrap.sh's use of it. Fake `ldd`/`apt-get` scripts on PATH exercise the real subprocess paths."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.gui import platform_check as pc

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is Linux-only")

# What ldd prints for libqxcb.so when libxcb-cursor0 is missing (abridged from a real run). libxcb-cursor is
# reported twice (needed by libqxcb.so and by libQt6XcbQpa.so.6) and libdbus-1 is only a transitive dependency.
LDD_CURSOR_MISSING = """\
\tlinux-vdso.so.1 (0x00007ffd0b5f2000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/plugins/platforms/../../lib/libQt6XcbQpa.so.6 (0x00007f702895f000)
\tlibGL.so.1 => /lib/x86_64-linux-gnu/libGL.so.1 (0x00007f7027d79000)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => /lib/x86_64-linux-gnu/libxcb-icccm.so.4 (0x00007f7027d5f000)
\tlibxcb.so.1 => /lib/x86_64-linux-gnu/libxcb.so.1 (0x00007f702759d000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7026c1e000)
\tlibxcb-cursor.so.0 => not found
\tlibdbus-1.so.3 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f7028a2f000)
"""
LDD_ALL_FOUND = "\n".join(line for line in LDD_CURSOR_MISSING.splitlines() if "not found" not in line) + "\n"


def _script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A folder first on PATH: `ldd` logs its arguments to ldd.log and prints ldd_output.txt; `apt-get` fails
    (a test must never reach the real one; the install test replaces it)."""
    bin_dir = tmp_path / "bin"
    output = tmp_path / "ldd_output.txt"
    output.write_text(LDD_ALL_FOUND)
    _script(bin_dir / "ldd", f'echo "$@" >> "{tmp_path}/ldd.log"\ncat "{output}"\n')
    _script(bin_dir / "apt-get", 'echo "unexpected apt-get $@" >&2\nexit 97\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WORKBENCH_NO_APT", raising=False)
    return bin_dir, output, tmp_path / "ldd.log"


def test_injected_output_with_everything_found_reports_nothing():
    assert pc.missing_xcb_libraries(ldd_output=LDD_ALL_FOUND) == []


def test_injected_absence_names_each_library_once_including_transitive_ones():
    assert pc.missing_xcb_libraries(ldd_output=LDD_CURSOR_MISSING) == ["libxcb-cursor.so.0", "libdbus-1.so.3"]


def test_packages_and_commands_for_missing_libraries():
    missing = pc.missing_xcb_libraries(ldd_output=LDD_CURSOR_MISSING)
    assert pc.apt_packages(missing) == ["libxcb-cursor0", "libdbus-1-3"]
    assert pc.install_command(["libxcb-cursor0"], root=False) == "sudo apt-get install -y libxcb-cursor0"
    assert pc.install_command(["libxcb-cursor0", "libdbus-1-3"], root=True) == \
        "apt-get install -y libxcb-cursor0 libdbus-1-3"


def test_unknown_sonames_follow_debians_naming_rule_and_say_so():
    assert pc.package_for("libxcb-xinput.so.0") == ("libxcb-xinput0", False)
    assert pc.package_for("libFoo2.so.5") == ("libfoo2-5", False)  # a name ending in a digit gets a dash
    assert pc.package_for("ld-weird.so.2") == (None, False)
    assert pc.apt_packages(["libglib-2.0.so.0", "libgthread-2.0.so.0", "ld-weird.so.2"]) == ["libglib2.0-0"]
    report = pc.library_report(["libxcb-xinput.so.0", "ld-weird.so.2"], root=False)
    assert "libxcb-xinput.so.0  ->  libxcb-xinput0 (package name guessed" in report
    assert "apt-file search ld-weird.so.2" in report
    assert "sudo apt-get install -y libxcb-xinput0" in report


@linux_only
def test_known_packages_match_the_installed_files_owners():
    """Each mapped library installed here belongs to the package the table names (dpkg's own answer)."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("dpkg-query is not available (not Debian/Ubuntu)")
    checked = 0
    for soname, package in pc.KNOWN_PACKAGES.items():
        found = subprocess.run(["dpkg-query", "-S", f"*/{soname}"], capture_output=True, text=True, check=False)
        owners = {line.split(":")[0] for line in found.stdout.splitlines()}
        if owners:
            assert package in owners, (soname, owners)
            checked += 1
    assert checked >= 10  # this project's machines have most of Qt's X11 stack


@linux_only
def test_real_plugin_is_checked_with_ldd_and_its_verdict_matches_the_loader():
    plugin = pc.find_plugin()
    assert plugin is not None and plugin.name == "libqxcb.so"
    output = pc.run_ldd(plugin)
    assert output is not None and "libdbus-1.so.3" in output  # ldd lists the transitive closure
    missing = pc.missing_xcb_libraries()
    for soname in missing:  # whatever this machine lacks really cannot be loaded
        with pytest.raises(OSError):
            ctypes.CDLL(soname)
    for present in ("libc.so.6", "libxcb.so.1"):
        if f"{present} => /" in output:
            assert present not in missing


def test_the_plugin_path_is_what_ldd_is_run_on(fake_bin):
    _, output, log = fake_bin
    output.write_text(LDD_CURSOR_MISSING)
    assert pc.missing_xcb_libraries() == ["libxcb-cursor.so.0", "libdbus-1.so.3"]
    assert log.read_text().split() == [str(pc.find_plugin())]


def test_no_display_message_suggests_offscreen_and_xvfb(monkeypatch, fake_bin):
    monkeypatch.setattr(sys, "platform", "linux")
    message = pc.startup_problem({})
    assert "no display found" in message
    assert "QT_QPA_PLATFORM=offscreen" in message and "xvfb-run workbench" in message
    assert pc.startup_problem({"QT_QPA_PLATFORM": "xcb"}) == message
    assert not fake_bin[2].exists()  # no ldd run without a display


@pytest.mark.parametrize("environ", [{"QT_QPA_PLATFORM": "offscreen"},
                                     {"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"},
                                     {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"},
                                     {"QT_QPA_PLATFORM": "wayland;xcb"}])
def test_no_problem_and_no_ldd_when_qt_will_not_use_xcb(monkeypatch, fake_bin, environ):
    monkeypatch.setattr(sys, "platform", "linux")
    fake_bin[1].write_text(LDD_CURSOR_MISSING)
    assert pc.startup_problem(environ) is None
    assert not fake_bin[2].exists()


def test_missing_library_on_x11_is_named_with_its_package_and_command(monkeypatch, fake_bin):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(pc, "is_root", lambda: False)
    fake_bin[1].write_text(LDD_CURSOR_MISSING)
    message = pc.startup_problem({"DISPLAY": ":0"})
    assert "libxcb-cursor.so.0  ->  libxcb-cursor0" in message
    assert "sudo apt-get install -y libxcb-cursor0 libdbus-1-3" in message
    fake_bin[1].write_text(LDD_ALL_FOUND)
    assert pc.startup_problem({"DISPLAY": ":0", "QT_QPA_PLATFORM": "xcb"}) is None


def test_nothing_to_report_on_other_systems(monkeypatch, fake_bin):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert pc.startup_problem({}) is None


def _module(env_path: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    environ.update(PATH=env_path, DISPLAY=":0", **env)
    return subprocess.run([sys.executable, "-m", "workbench.gui.platform_check", *args], capture_output=True,
                          text=True, cwd=ROOT, env=environ, timeout=60, check=False)


@linux_only
def test_module_exit_codes_and_json(fake_bin):
    _, output, _ = fake_bin
    path = os.environ["PATH"]
    done = _module(path, "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    output.write_text(LDD_CURSOR_MISSING)
    done = _module(path, "--json")
    assert done.returncode == pc.EXIT_MISSING
    result = json.loads(done.stdout)
    assert result["missing"] == ["libxcb-cursor.so.0", "libdbus-1.so.3"]
    assert result["packages"] == ["libxcb-cursor0", "libdbus-1-3"]
    assert result["command"].endswith("apt-get install -y libxcb-cursor0 libdbus-1-3")
    done = _module(path, "--install", WORKBENCH_NO_APT="1")
    assert done.returncode == pc.EXIT_MISSING
    assert "apt-get install -y libxcb-cursor0 libdbus-1-3" in done.stderr
    assert "Not installed automatically: WORKBENCH_NO_APT is set." in done.stderr
    done = _module(path, QT_QPA_PLATFORM="offscreen")  # the libraries do not matter offscreen
    assert done.returncode == 0 and "Not checked" in done.stdout


@linux_only
def test_install_runs_apt_get_then_checks_again(fake_bin, monkeypatch, capsys):
    bin_dir, output, _ = fake_bin
    output.write_text(LDD_CURSOR_MISSING)
    apt_log = bin_dir.parent / "apt.log"
    (bin_dir.parent / "all_found.txt").write_text(LDD_ALL_FOUND)
    # The fake apt-get "installs" by making the fake ldd find everything.
    _script(bin_dir / "apt-get", f'echo "$DEBIAN_FRONTEND $@" >> "{apt_log}"\n'
                                 f'cp "{bin_dir.parent}/all_found.txt" "{output}"\n')
    monkeypatch.setattr(pc, "is_root", lambda: True)
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert pc.main(["--install"]) == 0
    assert apt_log.read_text().splitlines() == ["noninteractive update",
                                                "noninteractive install -y libxcb-cursor0 libdbus-1-3"]
    assert "Installed: libxcb-cursor0 libdbus-1-3" in capsys.readouterr().err


def _fake_venv(tmp_path: Path) -> Path:
    """A venv the bootstrap takes as installed: python is the real one, `workbench` only records its launch."""
    venv = tmp_path / "venv"
    _script(venv / "bin" / "python", f'exec "{sys.executable}" "$@"\n')
    _script(venv / "bin" / "workbench", f'echo "launched $@" > "{tmp_path}/launched"\n')
    (venv / ".workbench-installed").write_text(hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
                                               + "\n")
    return venv


def _bootstrap(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    environ.update(WORKBENCH_VENV=str(_fake_venv(tmp_path)), DISPLAY=":0", **env)
    return subprocess.run(["bash", str(ROOT / "packaging" / "bootstrap.sh"), "app", *args], capture_output=True,
                          text=True, env=environ, timeout=60, check=False)


@linux_only
def test_bootstrap_stops_with_the_apt_command_when_it_may_not_install(fake_bin, tmp_path):
    fake_bin[1].write_text(LDD_CURSOR_MISSING)
    done = _bootstrap(tmp_path, WORKBENCH_NO_APT="1")
    assert done.returncode == pc.EXIT_MISSING
    assert "libxcb-cursor.so.0  ->  libxcb-cursor0" in done.stderr
    assert "apt-get install -y libxcb-cursor0 libdbus-1-3" in done.stderr
    assert "The workbench was not started" in done.stderr
    assert not (tmp_path / "launched").exists()


@linux_only
def test_bootstrap_launches_when_all_is_there_and_skips_the_check_for_commands(fake_bin, tmp_path):
    done = _bootstrap(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "launched").read_text().strip() == "launched"
    assert fake_bin[2].read_text().split() == [str(pc.find_plugin())]
    fake_bin[1].write_text(LDD_CURSOR_MISSING)
    fake_bin[2].unlink()
    done = _bootstrap(tmp_path, "train", "--steps", "1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "launched").read_text().strip() == "launched train --steps 1"
    assert not fake_bin[2].exists()
