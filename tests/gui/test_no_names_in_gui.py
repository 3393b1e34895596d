"""The GUI names no algorithm, dataset or hyperparameter: it builds its panels, tabs and texts from the
declarations (kinds, ``Algorithm.info()``, ``DatasetInfo``), so a new algorithm, dataset or kind (or a plugin's)
needs no GUI code.

The names are read from the registries at test time: every registered algorithm and dataset name, every
algorithm's hyperparameter names (``HParams`` fields) and every kind's option names (``Options`` fields). Each
module ``workbench/gui/**/*.py`` is parsed (``ast`` for code and strings, ``tokenize`` for comments) and may not
contain a name:

1. as a whole string literal, e.g. ``{"meta-weight-net": ...}`` or ``getattr(hparams, "test_inner_steps")``;
2. quoted inside a string or comment (``'name'``, ``"name"``, `` `name` ``) or after a CLI flag
   (``--algorithm name``, ``--dataset name``, ``--hparam name=...``);
3. as a whole word in a string or comment when the name cannot be an ordinary word: it has a hyphen or an
   underscore (``meta-weight-net``, ``test_inner_steps``);
4. as an identifier (variable, attribute, argument, keyword) when it has an underscore or hyphen (hyphens read as
   underscores: ``meta_weight_net``);
5. as an imported module: no GUI module imports an algorithm's or a dataset's module.

Single ordinary words ("folder", "hidden", "head") are therefore caught only as whole or quoted strings, never in
prose ("Choose the folder") or as variables (``folder = Path(...)``), where they mean the word. A name that is also
a word of the core's own vocabulary (a key of the kinds', algorithms' or datasets' info, of a training record, of
the config sections, of the data and model specs, a view capability) cannot be told apart from that use ("metric" is
both a hyperparameter of one algorithm and the key a training record names its metric with; ``split.num_classes``
is the data's own attribute) and is exempt; the test checks the exemptions stay few.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

import workbench.gui
from workbench.core import catalog

GUI = Path(workbench.gui.__file__).parent
MAX_EXEMPT = 3


@dataclass(frozen=True)
class Names:
    words: frozenset[str]  # algorithm, dataset, hyperparameter and kind-option names
    exempt: frozenset[str]  # those that are also words of the core's vocabulary
    modules: frozenset[str]  # dotted modules of algorithms and datasets

    @property
    def checked(self) -> frozenset[str]:
        return self.words - self.exempt


def core_vocabulary() -> set[str]:
    from workbench.core.algorithms.base import HOOKS
    from workbench.core.config import AlgorithmConfig, ExperimentConfig, config_fields
    from workbench.core.data import ClassSplit, PreprocessSpec
    from workbench.core.kinds import VIEW_CAPABILITIES
    from workbench.core.models.spec import ModelSpec
    from workbench.core.training.trainer import StepRecord

    words = set(VIEW_CAPABILITIES) | set(HOOKS)
    for info in (catalog.kinds_info()[:1] + catalog.algorithms_info()[:1] + catalog.datasets_info()[:1]):
        words |= set(info)
    record = StepRecord(1, 1, loss=0.0, score=0.0, lr=0.0, elapsed_s=0.0, steps_per_s=0.0, eta_s=0.0)
    words |= set(record.to_dict())
    words |= {spec.name for section in config_fields().values() for spec in section}
    words |= {field.name for cls in (ExperimentConfig, AlgorithmConfig, ModelSpec, PreprocessSpec)
              for field in fields(cls)}
    words |= {name for name in dir(ClassSplit) if not name.startswith("_")}  # e.g. split.num_classes
    return words


def registered_names() -> Names:
    from workbench.core.algorithms import get_algorithm
    from workbench.core.data import dataset_info

    algorithms = catalog.algorithms_info()
    datasets = catalog.datasets_info()
    words = {info["name"] for info in algorithms} | {info["name"] for info in datasets}
    words |= {spec["name"] for info in algorithms for spec in info["hparams"]}
    words |= {option["name"] for info in catalog.kinds_info() for option in info["options"]}
    modules = {get_algorithm(info["name"]).__module__ for info in algorithms}
    modules |= {dataset_info(info["name"]).module_path for info in datasets}
    return Names(frozenset(words), frozenset(words & core_vocabulary()), frozenset(modules))


def _compound(name: str) -> bool:
    return "-" in name or "_" in name


def _text_problems(text: str, names: Names) -> list[str]:
    """Rules 2 and 3 on a string's or comment's text."""
    found = []
    for name in names.checked:
        quoted = re.escape(name)
        patterns = [rf"(['\"`]){quoted}\1", rf"--(?:algorithm|dataset|hparam)[ =]{quoted}(?![\w-])"]
        if _compound(name):
            patterns.append(rf"(?<![\w-]){quoted}(?![\w-])")
        if any(re.search(pattern, text) for pattern in patterns):
            found.append(name)
    return found


def _identifier(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.arg):
        return node.arg
    if isinstance(node, ast.keyword):
        return node.arg
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    return None


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return []


def problems(source: str, names: Names) -> list[str]:
    """Every use of a registered name in one module's source, as "line N: what"."""
    found = []
    identifiers = {name.replace("-", "_") for name in names.checked if _compound(name)}
    tree = ast.parse(source)
    # The text between an f-string's fields is prose, never a whole literal.
    pieces = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if id(node) not in pieces and text.strip() in names.checked:
                found.append(f"line {line}: the string {text.strip()!r}")
            found += [f"line {line}: {name!r} in a string" for name in _text_problems(text, names)]
        identifier = _identifier(node)
        if identifier in identifiers:
            found.append(f"line {line}: the identifier {identifier}")
        found += [f"line {line}: imports {module}" for module in _imported(node) if module in names.modules]
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found += [f"line {token.start[0]}: {name!r} in a comment"
                      for name in _text_problems(token.string, names)]
    return sorted(set(found))


@pytest.fixture(scope="module")
def names() -> Names:
    return registered_names()


def test_the_registries_give_names_to_look_for(names):
    assert len(names.words) > 20 and names.modules
    assert len(names.exempt) <= MAX_EXEMPT, f"too many names double as core vocabulary: {sorted(names.exempt)}"


@pytest.mark.parametrize("path", sorted(GUI.rglob("*.py")), ids=lambda path: str(path.relative_to(GUI)))
def test_no_gui_module_names_an_algorithm_dataset_or_hyperparameter(path, names):
    found = problems(path.read_text(encoding="utf-8"), names)
    assert not found, f"{path.relative_to(GUI.parent.parent)} names registered names:\n" + "\n".join(found)


def test_the_rules_catch_what_they_should_and_spare_prose(names):
    from workbench.core.algorithms import get_algorithm

    algorithms = catalog.algorithms_info()
    algorithm = next(info["name"] for info in algorithms if "-" in info["name"])
    hparam = next(spec["name"] for info in algorithms for spec in info["hparams"] if "_" in spec["name"])
    dataset = catalog.datasets_info()[0]["name"]
    module = get_algorithm(algorithm).__module__
    bad = [f"WEIGHTING = {{{algorithm!r}: 'x'}}",
           f"HELP = 'train with <code>workbench train --algorithm {algorithm} --steps 5</code>'",
           f"steps = getattr(hparams, {hparam!r})",
           f"TEXT = 'the `{dataset}` dataset'",
           f"value = config.{hparam.replace('-', '_')}",
           f"x = 1  # mirrors {algorithm}'s history file",
           f"from {module.rsplit('.', 1)[0]} import {module.rsplit('.', 1)[1]}"]
    for source in bad:
        assert problems(source, names), source
    ordinary = next((name for name in names.checked if not _compound(name) and name.isalpha()), None)
    if ordinary is not None:  # an ordinary word in prose and as a variable is not a name
        assert not problems(f"{ordinary} = 1\nTEXT = 'the {ordinary} of it'", names)


def test_the_weights_view_of_before_kinds_fails(names):
    """The rule that retired its list of weighting algorithms and its CLI example."""
    source = ('WEIGHTING_ALGORITHMS = {"meta-weight-net": "Meta-Weight-Net"}\n'
              'EXPLANATION = "(<code>workbench train --algorithm meta-weight-net --label-noise 0.4</code>)"\n'
              'noise = float(history.get("label_noise", 0))\n')
    assert "meta-weight-net" in names.checked  # built in
    found = problems(source, names)
    assert any("line 1" in item for item in found) and any("line 2" in item for item in found)
    assert any("line 3" in item for item in found)
