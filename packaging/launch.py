"""Entry script for the PyInstaller bundle: the same `workbench` command as the pip-installed one.

Without arguments it opens the GUI; `workbench train ...`, `workbench eval ...` and the rest work too.
"""

import multiprocessing
import sys

from workbench.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a frozen app re-executes itself for any worker process
    sys.exit(main())
