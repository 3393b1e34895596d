"""Package metadata: what setuptools reads from pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_string_and_the_build_backend_reads_it():
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    license_field = config["project"]["license"]
    # The table form ({text = ...}) is deprecated by setuptools and warns at every install.
    assert isinstance(license_field, str) and re.fullmatch(r"[A-Za-z0-9.\-+]+( (AND|OR|WITH) [A-Za-z0-9.\-+]+)*",
                                                            license_field)
    setuptools_requirement = next(r for r in config["build-system"]["requires"] if r.startswith("setuptools"))
    minimum = tuple(int(part) for part in setuptools_requirement.split(">=")[1].split("."))
    assert minimum >= (77,)  # the first setuptools that reads the SPDX form
    installed = importlib.metadata.metadata("meta-learning-workbench")
    assert installed.get("License-Expression") == license_field
