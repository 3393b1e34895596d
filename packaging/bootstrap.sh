#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, then launch the app or run the test suite.
#   bash packaging/bootstrap.sh app [workbench args...]   # sets up, then opens the workbench
#   bash packaging/bootstrap.sh test [pytest args...]     # sets up, then runs the whole test suite
# Before opening the window on Linux it checks the system libraries Qt's xcb plugin needs: as root with apt-get
# it installs the missing ones, otherwise it prints the apt-get command and stops (WORKBENCH_NO_APT=1: never
# run apt-get; WORKBENCH_SKIP_LIBCHECK=1: skip the check).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${WORKBENCH_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$venv/bin/python" ]; then
    echo "Creating the virtual environment in $venv ..." >&2
    "$python" -m venv "$venv"
fi
# Reinstall only when the dependency declaration changed.
stamp="$venv/.workbench-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing the workbench and its dependencies (first run takes a few minutes) ..." >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi

# Qt's own text for a missing xcb library is misleading ("could not load the Qt platform plugin"); name them.
check_gui_libraries() {
    local rc=0
    "$venv/bin/python" -m workbench.gui.platform_check --install --quiet || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "The workbench was not started: install the libraries above, then run this again" \
             "(or start it without a window: QT_QPA_PLATFORM=offscreen bash packaging/bootstrap.sh app)." >&2
        exit "$rc"
    fi
}

# The window opens for no arguments, Qt options (-style ...) and the tour; other commands run headless.
opens_window() {
    case "${1:-}" in
        "" | tour) return 0 ;;
        -h | --help | --version) return 1 ;;
        -*) return 0 ;;
        *) return 1 ;;
    esac
}

what="${1:-app}"
shift || true
case "$what" in
    app)
        if [ "$(uname -s)" = Linux ] && [ -z "${WORKBENCH_SKIP_LIBCHECK:-}" ] && opens_window "$@"; then
            check_gui_libraries
        fi
        exec "$venv/bin/workbench" "$@"
        ;;
    test)
        export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-offscreen}"
        exec "$venv/bin/python" -m pytest -q "$@"
        ;;
    *)
        echo "usage: bash packaging/bootstrap.sh app|test [args...]" >&2
        exit 2
        ;;
esac
