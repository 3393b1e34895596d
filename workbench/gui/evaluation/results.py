"""Reading evaluation results of any kind, without widgets: the headline metric (from the kind's ``MetricSpec``),
per-task scores for paired tests, scores by adaptation steps, curves among an algorithm's extras, the verdict of a
comparison, and the series of a run's saved results against shots.

A result is whatever the kind's ``evaluate`` returned (or ``result_from_dict`` read back); only its documented
JSON (``to_dict()``) and arrays (``arrays()``) are read here, so a new kind needs no change in the GUI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.core.kinds import DEFAULT_KIND, MetricSpec, get_kind_class
from workbench.core.stats import paired_test

SIGNIFICANCE = 0.05
# The confusion matrix shows at most this many classes: those involved in the most errors.
CONFUSION_MAX_CLASSES = 20


def metric_of(kind: str | None) -> MetricSpec:
    """The headline metric of an experiment kind (classification when a file predates kinds)."""
    return get_kind_class(kind or DEFAULT_KIND).metric


def metric_name(metric: MetricSpec) -> str:
    """The metric's title inside a sentence: 'accuracy', but 'MSE'."""
    return metric.title if metric.title.isupper() else metric.title.lower()


def setting_text(kind: str | None, ways: int | None, shots: int | None) -> str:
    """'5-way 1-shot', or '10-shot' for a kind whose tasks have no ways (its dataset fields leave them out)."""
    try:
        with_ways = "ways" in get_kind_class(kind or DEFAULT_KIND).dataset_fields
    except Exception:  # a kind whose plugin is gone: say what the record says
        with_ways = bool(ways)
    return shots_text(ways if with_ways else None, shots)


def shots_text(ways: int | None, shots: int | None) -> str:
    """'5-way 1-shot', '10-shot', or '' for a result without shots (a kind whose tasks have none)."""
    if not shots:
        return ""
    return f"{ways}-way {shots}-shot" if ways else f"{shots}-shot"


def tested_on(data: dict[str, Any]) -> dict[str, str] | None:
    """For a result on another dataset than the run trained on: {"dataset", "root", "trained_on"}; else None."""
    other = (data.get("extras") or {}).get("evaluated_on")
    return other if isinstance(other, dict) and other.get("dataset") else None


def data_title(name: str) -> str:
    """A dataset's title from the catalog (its name when a plugin is gone)."""
    from workbench.core.data import dataset_info

    info = dataset_info(name)
    return info.title if info is not None else name


def tested_on_text(data: dict[str, Any]) -> str:
    """'on <dataset title> (<location>)' for a result on another dataset, else ''."""
    other = tested_on(data)
    if other is None:
        return ""
    where = f" ({other['root']})" if other.get("root") else ""
    return f"on {data_title(other['dataset'])}{where}"


@dataclass
class Curve:
    """A curve an evaluation carries among its extras: ``"<metric>_by_<x>": {x: value}``, with optional
    ``"ci95_by_<x>"`` (same keys) and a ``"<x>_note"`` saying how it was measured (e.g. accuracy against an attack's
    budget)."""

    metric: str
    x: str
    points: list[tuple[float, float, float]]  # (x, value, ci95), sorted by x
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.metric}_by_{self.x}"

    @property
    def metric_title(self) -> str:
        """'Accuracy'."""
        return f"{self.metric[:1].upper()}{self.metric[1:]}".replace("_", " ")

    @property
    def title(self) -> str:
        """'Accuracy by epsilon'."""
        return f"{self.metric_title} by {self.x.replace('_', ' ')}"


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def extras_curves(extras: dict[str, Any]) -> list[Curve]:
    """The curves among an evaluation's extras (see :class:`Curve`); malformed entries are left out."""
    found = []
    for key, points in (extras or {}).items():
        metric, by, x = key.partition("_by_")
        if not by or metric == "ci95" or not isinstance(points, dict) or not points:
            continue
        intervals = extras.get(f"ci95_by_{x}")
        intervals = intervals if isinstance(intervals, dict) else {}
        try:
            rows = sorted((float(k), _number(v), _number(intervals.get(k))) for k, v in points.items())
        except (TypeError, ValueError):
            continue
        found.append(Curve(metric, x, rows, str(extras.get(f"{x}_note") or "")))
    return found


@dataclass
class Breakdown:
    """A metric an evaluation carries among its extras per named group rather than along a number, e.g. accuracy
    per dataset of a mixture: ``"<metric>_by_<x>": {name: value}`` with optional ``"ci95_by_<x>"`` and
    ``"episodes_by_<x>"`` (same keys) and a ``"<x>_note"``."""

    metric: str
    x: str
    rows: list[tuple[str, float, float, int | None]]  # (name, value, ci95, episodes), in name order
    note: str = ""

    @property
    def title(self) -> str:
        """'Accuracy by domain'."""
        return f"{self.metric[:1].upper()}{self.metric[1:]} by {self.x}".replace("_", " ")


def _is_number(key: Any) -> bool:
    try:
        float(key)
    except (TypeError, ValueError):
        return False
    return True


def extras_breakdowns(extras: dict[str, Any]) -> list[Breakdown]:
    """The per-group metrics among an evaluation's extras (see :class:`Breakdown`): the ``_by_`` entries whose keys
    are names, not numbers; the counts and intervals that go with them are not breakdowns of their own."""
    found = []
    for key, points in (extras or {}).items():
        metric, by, x = key.partition("_by_")
        if (not by or metric in ("ci95", "episodes") or not isinstance(points, dict) or not points
                or all(_is_number(k) for k in points)):
            continue
        intervals = extras.get(f"ci95_by_{x}") if isinstance(extras.get(f"ci95_by_{x}"), dict) else {}
        counts = extras.get(f"episodes_by_{x}") if isinstance(extras.get(f"episodes_by_{x}"), dict) else {}
        try:
            rows = [(str(name), _number(points[name]), _number(intervals.get(name)),
                     int(counts[name]) if counts.get(name) is not None else None) for name in sorted(points)]
        except (TypeError, ValueError):
            continue
        found.append(Breakdown(metric, x, rows, str(extras.get(f"{x}_note") or "")))
    return found


@dataclass
class ResultData:
    """One evaluation result, read through its JSON and arrays."""

    result: Any
    data: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, result: Any) -> "ResultData":
        if isinstance(result, ResultData):
            return result
        arrays = result.arrays() if hasattr(result, "arrays") else {}
        return cls(result, dict(result.to_dict()), dict(arrays or {}))

    @property
    def kind(self) -> str:
        return self.data.get("kind") or DEFAULT_KIND

    @property
    def metric(self) -> MetricSpec:
        return metric_of(self.kind)

    @property
    def value(self) -> float:
        return float(self.data[self.metric.key])

    @property
    def ci95(self) -> float:
        ci95 = self.data.get("ci95")
        return float("nan") if ci95 is None else float(ci95)

    @property
    def episodes(self) -> int:
        return int(self.data.get("episodes", 0))

    @property
    def steps(self) -> int | None:
        """The adaptation steps of the headline number, for kinds that report scores by steps."""
        return int(self.data["steps"]) if self.data.get("steps") is not None else None

    def by_steps(self) -> list[tuple[int, float, float]]:
        """[(steps, score, ci95)] sorted by steps, from ``<metric>_by_steps``; empty for kinds without them."""
        scores = self.data.get(f"{self.metric.key}_by_steps") or {}
        intervals = self.data.get("ci95_by_steps") or {}
        return sorted((int(k), float(v), float(intervals.get(k, float("nan")))) for k, v in scores.items())

    def curves(self) -> list[Curve]:
        """Curves the algorithm added to the result (e.g. accuracy against an attack's budget)."""
        return extras_curves(self.data.get("extras") or {})

    def breakdowns(self) -> list[Breakdown]:
        """Metrics per named group the evaluation added (e.g. accuracy per dataset of a mixture)."""
        return extras_breakdowns(self.data.get("extras") or {})

    def scale(self, metric_key: str) -> float:
        """100 for a metric shown in percent (the kind's headline metric, when it is a percentage), else 1."""
        return 100.0 if metric_key == self.metric.key and self.metric.percent else 1.0

    def per_task(self) -> np.ndarray:
        """The headline metric of each episode/task, in the order of the fixed tasks (for paired tests)."""
        key = self.metric.key
        values = self.arrays.get(f"per_episode_{key}")
        if values is None:
            values = self.arrays.get(f"per_task_{key}")
        if values is None:
            return np.zeros(0)
        values = np.asarray(values, np.float64)
        if values.ndim == 2 and values.shape[1] == 1:
            return values[:, 0]
        if values.ndim == 2:  # one column per reported step count: take the headline one
            steps = self.arrays.get("reported_steps")
            steps = [int(s) for s in steps] if steps is not None else [s for s, _, _ in self.by_steps()]
            if self.steps not in steps:
                raise ValueError(f"the saved per-task {self.metric.title} holds steps {steps}, not the headline "
                                 f"{self.steps} steps")
            values = values[:, steps.index(self.steps)]
        return values

    def setting(self) -> str:
        """'5-way 1-shot, 600 test episodes, seed 0' or '10-shot, 600 test tasks, seed 0, after 10 steps'."""
        ways, shots = self.data.get("ways"), self.data.get("shots")
        noun = "episodes" if ways else "tasks"
        text = ", ".join(filter(None, [shots_text(ways, shots),
                                       f"{self.episodes} {self.data.get('split', 'test')} {noun}"]))
        text += f", seed {self.data.get('seed')}"
        if self.steps is not None:
            text += f", after {self.steps} step{'s' if self.steps != 1 else ''}"
        other = tested_on_text(self.data)
        if other:
            text += f", {other}, trained on {data_title(tested_on(self.data)['trained_on'])}"
        return text

    def headline(self) -> str:
        """'Accuracy 97.12% ± 0.31' / 'MSE 0.532 ± 0.041'."""
        return f"{self.metric.title} {self.metric.format(self.value, self.ci95)}"


def verdict(mean_diff: float, p_value: float, metric: MetricSpec | None = None, level: float = SIGNIFICANCE) -> str:
    """'better' / 'worse' (by the metric's direction) when significant at ``level``, else 'same' (as in Weka's
    Experimenter). Without a metric, higher is better."""
    if p_value < level and mean_diff != 0.0:
        improved = metric.better(mean_diff, 0.0) if metric is not None else mean_diff > 0
        return "better" if improved else "worse"
    return "same"


def compare_rows(results: dict[str, ResultData], baseline_id: str,
                 alpha: float = SIGNIFICANCE) -> list[dict[str, Any]]:
    """One row per run: its score and, against the baseline, the paired test on per-task scores."""
    base = results[baseline_id]
    rows = []
    for run_id, result in results.items():
        row = {"run": run_id, "algorithm": result.data.get("algorithm", ""), "value": result.value,
               "ci95": result.ci95, "baseline": run_id == baseline_id, "diff": 0.0, "p": 1.0,
               "verdict": "baseline", "error": ""}
        if run_id != baseline_id:
            try:
                diff, p_value = paired_test(result.per_task(), base.per_task())
                row.update(diff=diff, p=p_value, verdict=verdict(diff, p_value, result.metric, alpha))
            except ValueError as exc:  # no per-task scores, or not the same tasks
                row.update(diff=float("nan"), p=float("nan"), verdict="untested", error=str(exc))
        rows.append(row)
    return rows


def most_confused(confusion: np.ndarray, limit: int = CONFUSION_MAX_CLASSES) -> np.ndarray:
    """Indexes of the classes involved in the most errors (as true or predicted class), at most ``limit``,
    in their original order."""
    confusion = np.asarray(confusion)
    n = confusion.shape[0]
    if n <= limit:
        return np.arange(n)
    errors = confusion.sum(0) + confusion.sum(1) - 2 * np.diag(confusion)
    top = np.argsort(-errors, kind="stable")[:limit]
    return np.sort(top)


def shot_series(saved: list[dict[str, Any]]) -> dict[int | None, list[tuple[int, float, float]]]:
    """{ways (None for kinds without classes): [(shots, score, ci95)]} from a run's saved test evaluations
    (``Run.evaluations()``, oldest first: the newest per shot wins)."""
    series: dict[int | None, dict[int, tuple[float, float]]] = {}
    for entry in saved:
        if entry.get("split", "test") != "test" or tested_on(entry):  # the run's own dataset only
            continue
        key = metric_of(entry.get("kind")).key
        if entry.get(key) is None or entry.get("shots") is None:
            continue
        ways = int(entry["ways"]) if entry.get("ways") else None
        ci95 = entry.get("ci95")
        series.setdefault(ways, {})[int(entry["shots"])] = (float(entry[key]), float("nan") if ci95 is None
                                                            else float(ci95))
    return {ways: sorted((s, v, c) for s, (v, c) in by_shot.items()) for ways, by_shot in series.items()}


def describe_saved(entry: dict[str, Any]) -> str:
    """One line for a saved evaluation JSON: score, setting, checkpoint."""
    metric = metric_of(entry.get("kind"))
    setting = shots_text(entry.get("ways"), entry.get("shots"))
    setting = f"{setting}, " if setting else ""
    steps = f", {entry['steps']} steps" if entry.get("steps") is not None else ""
    other = tested_on(entry)
    data = f"on {data_title(other['dataset'])}: " if other else ""  # first, where a narrow list still shows it
    return (f"{data}{metric.format(entry.get(metric.key), entry.get('ci95'))} · {setting}{entry.get('episodes')} "
            f"ep, seed {entry.get('seed')}{steps} ({entry.get('checkpoint', '')})")
