#!/usr/bin/env bash
# Set up (or reuse) the project's virtual environment, then launch the app or run the test suite.
#   bash packaging/bootstrap.sh app [workbench args...]   # sets up, then opens the workbench
#   bash packaging/bootstrap.sh test [pytest args...]     # sets up, then runs the whole test suite
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

what="${1:-app}"
shift || true
case "$what" in
    app)
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
