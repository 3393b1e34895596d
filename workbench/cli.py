"""The `workbench` command.

    workbench                      open the GUI (or run a short demo when Qt is not installed)
    workbench train ...            meta-train; flags and a TOML config (--config) are interchangeable
    workbench eval RUN ...         evaluate a run on fixed test episodes
    workbench runs [show|rename|delete|resume|compare] ...
    workbench algorithms | datasets
    workbench demo | tour | try

Every user error prints one line "error: ..." and exits with code 2; --json prints exactly one
JSON object on stdout while progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TextIO

from workbench import __version__

EXIT_OK, EXIT_UNEXPECTED, EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

# Config fields whose flag is not simply --field-name.
FLAG_NAMES = {
    ("dataset", "name"): "--dataset",
    ("dataset", "root"): "--data-root",
    ("evaluation", "episodes"): "--eval-episodes",
    ("evaluation", "seed"): "--eval-seed",
}
PRECISION_FLAG_CHOICES = ("auto", "fp32", "bf16", "fp16")  # workbench.core.precision.PRECISION_CHOICES (tested)
SUBCOMMANDS = ("train", "eval", "runs", "sweep", "kinds", "algorithms", "datasets", "plugins", "demo", "tour", "try")
# Meta-Weight-Net's --setting from before experiment kinds, as kinds.
LEGACY_SETTINGS = {"classification": "noisy-labels", "episodic": "classification"}
# Commands implemented elsewhere, imported only when used: module and what to call it in messages.
DELEGATED = {"tour": ("workbench.gui.tour", "the guided tour"), "try": ("workbench.tryatask.cli", "'try a task'")}


# --- output helpers -----------------------------------------------------------------------------
def _say(text: str) -> None:
    """A message for the user: stderr, so stdout stays clean for --json."""
    print(text, file=sys.stderr, flush=True)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_json_safe(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _pct(value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.2f}%"
    if ci is not None:
        text += f" ± {100 * ci:.2f}%"
    return text


class ProgressPrinter:
    """Progress on stderr: a redrawn bar with ETA on a terminal, plain lines every 10% (or 30 s)
    when stderr is a file or pipe."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._open_line = False
        self._last_length = 0
        self._last_draw = 0.0
        self._last_decile: dict[str, int] = {}
        self._last_line_time = time.monotonic()
        self._started: dict[str, float] = {}

    def update(self, done: int, total: int, text: str = "", *, key: str = "", eta_s: float | None = None,
               force: bool = False) -> None:
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        started = self._started.setdefault(key, now)
        if eta_s is None and done > 0:
            eta_s = (now - started) / done * (total - done)
        fraction = min(1.0, done / total)
        if self.tty:
            if not force and done < total and now - self._last_draw < 0.1:
                return
            filled = int(round(self.WIDTH * fraction))
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"[{bar}] {100 * fraction:3.0f}% {done}/{total} {text} ETA {format_duration(eta_s)}"[:160]
            # Pad over the previous, possibly longer, line.
            self.stream.write("\r" + line.ljust(self._last_length))
            self._last_length = len(line)
            self.stream.flush()
            self._open_line = True
            self._last_draw = now
        else:
            decile = int(10 * fraction)
            if (force or decile > self._last_decile.get(key, -1) or now - self._last_line_time >= 30.0
                    or done == total):
                if done == total and self._last_decile.get(key) == 10:
                    return
                self._last_decile[key] = decile
                self._last_line_time = now
                self.stream.write(f"{done}/{total} ({100 * fraction:.0f}%) {text} ETA {format_duration(eta_s)}\n")
                self.stream.flush()

    def line(self, text: str) -> None:
        """A full message line (ends an open progress bar first)."""
        if not self.enabled:
            return
        self.end()
        self.stream.write(text + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False
            self._last_length = 0

    def callback(self, key: str) -> Callable[[int, int, str], None]:
        """A ProgressCallback for loading or evaluating."""
        def report(done: int, total: int, message: str) -> None:
            self.update(done, total, message, key=key)
        return report


# --- config from flags ----------------------------------------------------------------------------
def _field_flags() -> list[tuple[str, Any, str, str]]:
    """(section, spec, flag, dest) for every config field, from the one place that describes them."""
    from workbench.core.config import config_fields

    out = []
    for section, specs in config_fields().items():
        for spec in specs:
            flag = FLAG_NAMES.get((section, spec.name), "--" + spec.name.replace("_", "-"))
            out.append((section, spec, flag, f"cfg_{section}_{spec.name}"))
    return out


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="TOML", help="Experiment config file (as written by --export-config or "
                        "the GUI); flags override its values.")
    parser.add_argument("--name", help="A name for the run (shown in `workbench runs`).")
    parser.add_argument("--kind", help="Experiment kind (see `workbench kinds`): classification (the default), "
                        "regression, noisy-labels.")
    parser.add_argument("--algorithm", help="Algorithm to train (see `workbench algorithms`).")
    parser.add_argument("--recipe", help="A named training setup of the algorithm (see `workbench algorithms`); "
                        "flags override its fields. Default: the algorithm's recommended recipe for the kind and "
                        "dataset; 'none' uses the bare declared defaults.")
    parser.add_argument("--task", action="append", default=[], metavar="KEY=VALUE", dest="task_values",
                        help="A setting of the experiment kind (the [task] section), repeatable.")
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="An algorithm hyperparameter, e.g. --hparam hidden=32 (repeatable).")
    parser.add_argument("--label-noise", metavar="RATE", dest="label_noise", default=None,
                        help="Fraction of corrupted training labels, for algorithms that learn under label noise "
                        "(meta-weight-net); same as --hparam label_noise=RATE.")
    parser.add_argument("--setting", metavar="SETTING", default=None, choices=("classification", "episodic"),
                        help="Meta-Weight-Net's settings as they were named before experiment kinds: "
                        "classification is --kind noisy-labels, episodic is --kind classification.")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="set_values",
                        help="Any config field, e.g. --set training.lr_schedule=constant (repeatable).")
    groups = {"dataset": parser.add_argument_group("dataset and episodes"),
              "training": parser.add_argument_group("training"),
              "evaluation": parser.add_argument_group("evaluation")}
    for section, spec, flag, dest in _field_flags():
        extra = spec.range_text()
        default = f"default {spec.default!r}"
        help_text = f"{spec.help} ({extra + '; ' if extra else ''}{default}; {section}.{spec.name})"
        help_text = help_text.replace("%", "%%")
        if spec.type is bool:
            groups[section].add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                         help=help_text)
        else:
            metavar = spec.type.__name__.upper() if not spec.choices else "{" + ",".join(map(str, spec.choices)) + "}"
            # Values stay text here: the config validates them and names the field when one is wrong.
            groups[section].add_argument(flag, dest=dest, metavar=metavar, default=None, help=help_text)


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    from workbench.core.errors import ConfigError

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(option, f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _read_config_file(path: str) -> tuple[dict, Path]:
    import tomllib

    from workbench.core.errors import ConfigError

    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read the config file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text), file.resolve().parent
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), f"not valid TOML: {exc}") from None


def _absolute_root(root: str, relative_to: list[Path]) -> str:
    if not root or "://" in root:
        return root
    path = Path(root).expanduser()
    if path.is_absolute():
        return str(path)
    for base in relative_to:
        if (base / path).exists():
            return str((base / path).resolve())
    return str((relative_to[0] / path).resolve())


def _base_data(args: argparse.Namespace, base: dict | None) -> dict[str, Any]:
    """The config file (or ``base``) as a dict of copied sections, a relative data root made absolute."""
    data: dict[str, Any] = dict(base or {})
    file_dir = None
    if getattr(args, "config", None):
        data, file_dir = _read_config_file(args.config)
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if isinstance(data.get("algorithm"), dict):
        data["algorithm"]["hparams"] = dict(data["algorithm"].get("hparams") or {})
    if isinstance(data.get("dataset"), dict) and data["dataset"].get("root") and file_dir is not None:
        # A relative root in a config file means: next to the file (else the working folder).
        data["dataset"]["root"] = _absolute_root(str(data["dataset"]["root"]), [file_dir, Path.cwd()])
    return data


def _apply_field_flags(args: argparse.Namespace, data: dict[str, Any]) -> None:
    from workbench.core.errors import ConfigError

    for section, spec, flag, dest in _field_flags():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if (section, spec.name) == ("dataset", "root"):
            value = _absolute_root(value, [Path.cwd()])
        if not isinstance(data.setdefault(section, {}), dict):
            raise ConfigError(section, "must be a table of settings")
        data[section][spec.name] = value
    training = data.get("training") or {}
    if getattr(args, "cfg_training_max_minutes", None) is not None and "steps" not in training:
        # A budget without a step count trains until the budget, its schedule following time.
        training["steps"] = 0


def _choose_algorithm(algorithm: dict[str, Any], name: str) -> None:
    if algorithm.get("name", "protonet") != name:
        algorithm.clear()  # hyperparameters (and the recipe) of another algorithm do not carry over
    algorithm["name"] = name


def _apply_algorithm_flags(args: argparse.Namespace, data: dict[str, Any], algorithm: dict[str, Any]) -> None:
    if getattr(args, "algorithm", None):
        _choose_algorithm(algorithm, args.algorithm)
    if getattr(args, "label_noise", None) is not None:
        algorithm.setdefault("hparams", {})["label_noise"] = args.label_noise
    if getattr(args, "setting", None) is not None:
        data["kind"] = LEGACY_SETTINGS[args.setting]
    if getattr(args, "kind", None):
        data["kind"] = args.kind
    if getattr(args, "recipe", None):
        algorithm["recipe"] = args.recipe
    for item in getattr(args, "task_values", None) or []:
        key, value = _split_assignment(item, "--task")
        data.setdefault("task", {})[key] = value
    for item in getattr(args, "hparam", None) or []:
        key, value = _split_assignment(item, "--hparam")
        algorithm.setdefault("hparams", {})[key] = value


def _apply_set_flags(args: argparse.Namespace, data: dict[str, Any], algorithm: dict[str, Any]) -> None:
    from workbench.core.errors import ConfigError

    for item in getattr(args, "set_values", None) or []:
        key, value = _split_assignment(item, "--set")
        parts = key.split(".")
        if parts in (["name"], ["kind"]):
            data[parts[0]] = value
        elif len(parts) == 3 and parts[:2] == ["algorithm", "hparams"]:
            algorithm.setdefault("hparams", {})[parts[2]] = value
        elif parts == ["algorithm", "name"]:
            _choose_algorithm(algorithm, value)
        elif parts == ["algorithm", "recipe"]:
            algorithm["recipe"] = value
        elif len(parts) == 2 and parts[0] in ("dataset", "training", "evaluation", "task"):
            if parts == ["dataset", "root"]:
                value = _absolute_root(value, [Path.cwd()])
            data.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(key, "use section.field with a section of dataset, training, evaluation, task or "
                              "algorithm.hparams (e.g. --set training.lr=0.001)")


def config_from_args(args: argparse.Namespace, base: dict | None = None):
    """The effective ExperimentConfig: defaults < recipe < --config file (or ``base``) < flags."""
    from workbench.core.config import ExperimentConfig, with_recommended_recipe
    from workbench.core.errors import ConfigError

    data = _base_data(args, base)
    _apply_field_flags(args, data)
    if getattr(args, "name", None) is not None:
        data["name"] = args.name
    algorithm = data.setdefault("algorithm", {})
    if not isinstance(algorithm, dict):
        raise ConfigError("algorithm", "must be a table of settings")
    _apply_algorithm_flags(args, data, algorithm)
    _apply_set_flags(args, data, algorithm)
    config = ExperimentConfig.from_dict(with_recommended_recipe(data))
    # Round-trip once so every value is typed and every hyperparameter is explicit.
    return ExperimentConfig.from_dict(config.to_dict())


# --- parser --------------------------------------------------------------------------------------
def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout (progress stays on "
                        "stderr).")
    parser.add_argument("--quiet", "-q", action="store_true", help="No progress output.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench", description="Meta-Learning Workbench: few-shot image classification. Without a command "
        "it opens the GUI.", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: workbench train --dataset omniglot --data-root ../shared/data/omniglot --algorithm "
               "protonet --ways 5 --shots 1 --steps 2000")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--startup-time", action="store_true",
                        help="Open the GUI, print the seconds from the process's start to the shown window (first "
                        "event-loop tick) and to the ready window, and exit (--json: as JSON; offscreen without a "
                        "display).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="Meta-train an algorithm and evaluate it.",
                                description="Meta-train an algorithm. Every config field has a flag; --config "
                                "reads a TOML file that the flags override.")
    _add_config_flags(train)
    train.add_argument("--export-config", metavar="PATH", help="Write the effective config as TOML (- for stdout) "
                       "and exit without training.")
    train.add_argument("--no-eval", action="store_true", help="Skip the final evaluation on the test episodes.")
    _add_launch_flags(train)
    _add_output_flags(train)

    evaluate = commands.add_parser("eval", help="Evaluate a run on fixed test episodes.",
                                   description="Evaluate a run's checkpoint on fixed test episodes: mean accuracy "
                                   "with a 95% confidence interval and per-class accuracy.".replace("%", "%%"))
    evaluate.add_argument("run", help="Run id (or unique prefix), run name, run folder or .pt checkpoint.")
    _add_eval_flags(evaluate)
    _add_output_flags(evaluate)

    _add_runs_parser(commands)
    _add_sweep_parser(commands)
    kinds = commands.add_parser("kinds", help="List the experiment kinds.")
    _add_output_flags(kinds)
    algorithms = commands.add_parser("algorithms", help="List the algorithms with their kinds, capabilities and "
                                     "recipes.")
    algorithms.add_argument("--kind", help="Only the algorithms that support this kind.")
    _add_output_flags(algorithms)
    datasets = commands.add_parser("datasets", help="List the datasets.")
    datasets.add_argument("--kind", help="Only the datasets that serve this kind.")
    _add_output_flags(datasets)
    plugins = commands.add_parser("plugins", help="List the installed plugins (with the errors of broken ones).")
    _add_output_flags(plugins)

    demo = commands.add_parser("demo", help="Train ProtoNet on the built-in glyphs for a few seconds and evaluate it.")
    demo.add_argument("--steps", type=int, default=300, help="Meta-training steps (default 300).")
    demo.add_argument("--episodes", type=int, default=300, help="Test episodes (default 300).")
    demo.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 picks automatically.")
    _add_output_flags(demo)

    commands.add_parser("tour", help="Open the GUI, run a short training and save a screenshot of each panel and view (--out DIR).", add_help=False).add_argument(
        "rest", nargs=argparse.REMAINDER)
    commands.add_parser("try", help="Try a trained model on your own images.", add_help=False).add_argument(
        "rest", nargs=argparse.REMAINDER)
    return parser


def _add_sweep_parser(commands) -> None:
    sweep = commands.add_parser(
        "sweep", help="Run (or resume) a hyperparameter study on Optuna; each trial is an ordinary run.",
        description="Run a study from a study file: an experiment config TOML with a [sweep] table (name, sampler = "
        "grid|random|tpe, trials, workers, pruner, and [sweep.parameters] mapping config paths such as "
        "\"algorithm.hparams.train_inner_lr\" or \"dataset.ways\" to { values = [...] } or { low, high, log }). The GUI's "
        "Sweep dialog exports the same file. The study is stored in studies.sqlite3 beside the run index, so "
        "--resume NAME continues it after a stop or a crash.")
    sweep.add_argument("study_file", nargs="?", metavar="STUDY.toml", help="The study file.")
    sweep.add_argument("--resume", metavar="NAME", help="Continue the stored study NAME (no study file needed).")
    sweep.add_argument("--list", action="store_true", help="List the stored studies.")
    sweep.add_argument("--trials", type=int, help="Trials to run in all (overrides the file).")
    sweep.add_argument("--workers", type=int, help="Trials at once (0: cores / threads per trial).")
    sweep.add_argument("--threads", type=int, help="Torch threads per trial.")
    sweep.add_argument("--ray-address", metavar="ADDR", help="Run the trials as Ray tasks on this cluster ('auto': "
                       "a local cluster already running) instead of local processes.")
    sweep.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///<home>/"
                       "studies.sqlite3); a database every node reaches for a cluster.")
    _add_output_flags(sweep)


def _add_runs_parser(commands) -> None:
    runs = commands.add_parser("runs", help="List and manage runs.", description="List runs (default), or show, "
                               "rename, delete, resume or compare them.")
    _add_output_flags(runs)
    runs_commands = runs.add_subparsers(dest="runs_command", metavar="ACTION")
    runs_list = runs_commands.add_parser("list", help="List runs (the default).")
    _add_output_flags(runs_list)
    show = runs_commands.add_parser("show", help="Details of one run.")
    show.add_argument("run")
    _add_output_flags(show)
    rename = runs_commands.add_parser("rename", help="Give a run a name.")
    rename.add_argument("run")
    rename.add_argument("new_name", metavar="NAME")
    _add_output_flags(rename)
    delete = runs_commands.add_parser("delete", help="Delete a run folder and its index entry.")
    delete.add_argument("run")
    delete.add_argument("--yes", "-y", action="store_true", help="Do not ask for confirmation.")
    _add_output_flags(delete)
    resume = runs_commands.add_parser("resume", help="Continue training a stopped, paused or crashed run.")
    resume.add_argument("run")
    resume.add_argument("--steps", help="Raise the planned steps to train a finished run longer.")
    resume.add_argument("--max-minutes", help="Wall-clock budget for this session in minutes.")
    resume.add_argument("--device", help="Device to continue on (auto, cpu, cuda, mps).")
    resume.add_argument("--precision", choices=PRECISION_FLAG_CHOICES, help="Precision to continue in (auto, "
                        "fp32, bf16, fp16).")
    resume.add_argument("--threads", help="CPU threads for torch; 0 picks automatically.")
    resume.add_argument("--data-root", help="Where the dataset lives now, if it moved.")
    resume.add_argument("--no-eval", action="store_true", help="Skip the final evaluation on the test episodes.")
    _add_launch_flags(resume)
    _add_output_flags(resume)
    compare = runs_commands.add_parser("compare", help="Compare runs side by side.")
    compare.add_argument("runs", nargs="+")
    _add_output_flags(compare)



def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", type=int, help="Fixed test episodes (default: the run's evaluation.episodes, "
                        "1,000 for Omniglot and glyphs, 600 otherwise).")
    parser.add_argument("--ways", type=int, help="N-way of the test episodes (default: the run's ways).")
    parser.add_argument("--shots", type=int, help="K-shot of the test episodes (default: the run's shots).")
    parser.add_argument("--queries", type=int, help="Queries per class (default: the run's queries).")
    parser.add_argument("--seed", type=int, help="Seed of the fixed test episodes (default: the run's "
                        "evaluation.seed).")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="Which checkpoint to evaluate (default best).")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto).")
    parser.add_argument("--precision", choices=PRECISION_FLAG_CHOICES, help="Number format of the backbone's "
                        "forward pass: auto (bf16 where the hardware has bfloat16 units and the algorithm keeps its "
                        "accuracy in it), fp32, bf16 or fp16. Default: the run's training.precision.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 picks automatically.")
    parser.add_argument("--no-save", action="store_true", help="Do not store the result in the run.")
    parser.add_argument("--dataset", metavar="NAME", help="Test on another dataset than the run trained on (see "
                        "'workbench datasets'), e.g. a glyph-trained run on Omniglot; its images are preprocessed "
                        "like the run's. Default: the run's dataset.")
    parser.add_argument("--data-root", metavar="PATH", help="Folder (or zip) of the --dataset to test on; with no "
                        "--dataset, another folder of the run's dataset type.")
    parser.add_argument("--adversarial", metavar="EPS[,EPS...]", help="Also measure the accuracy on adversarial "
                        "queries at each budget ε, in pixel units of a 0-1 scale (e.g. 0,0.01,0.03): each test "
                        "episode adapts on its clean support set, then its queries are attacked (white box) against "
                        "the adapted model. Saved with the evaluation as accuracy_by_epsilon. Classification runs of "
                        "gradient-based algorithms, on the run's own dataset.")
    parser.add_argument("--attack", choices=("fgsm", "pgd"), default="fgsm", help="The attack of --adversarial: fgsm "
                        "(one gradient-sign step of ε) or pgd (projected gradient descent: stronger, slower). "
                        "Default fgsm.")
    parser.add_argument("--attack-steps", type=int, default=10, help="Steps of the pgd attack (default 10).")
    parser.add_argument("--episode-domains", choices=("any", "within"), help="Test episodes whose classes come from "
                        "any domain or each from within one domain (an Omniglot alphabet, a folder subtree). "
                        "Default: the run's own setting.")


# --- commands ------------------------------------------------------------------------------------
STOP_SIGNALS = {signal.SIGINT: ("Ctrl+C", EXIT_INTERRUPTED), signal.SIGTERM: ("SIGTERM", EXIT_TERMINATED)}


@contextmanager
def _signals_stop(trainer, printer: ProgressPrinter):
    """The first Ctrl+C or SIGTERM (timeout, systemd, docker stop): stop after the current step and save; a
    second one aborts at once, as does one after training (during the test evaluation): the run is saved by
    then. ``state["exit_code"]`` is 130 after Ctrl+C, 143 after SIGTERM."""
    state = {"count": 0, "exit_code": None, "training": True}

    def handler(signum, frame):
        state["count"] += 1
        name, state["exit_code"] = STOP_SIGNALS[signum]
        if state["count"] == 1 and state["training"]:
            trainer.stop()
            printer.line(f"{name}: stopping after the current step and saving (send it again to abort)")
        else:
            raise KeyboardInterrupt

    previous = {}
    for signum in STOP_SIGNALS:
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            pass
    try:
        yield state
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def _print_start(printer: ProgressPrinter, trainer) -> None:
    run, config = trainer.run, trainer.config
    printer.line(f"run {run.id} ({run.path})")
    if trainer.resume_message:
        printer.line(trainer.resume_message)
    if trainer.validation_note:
        printer.line(f"note: {trainer.validation_note}")
    if "ways" in trainer.kind.dataset_fields:
        tasks = f"{config.train_ways}-way {config.train_shots}-shot episodes"
    elif "shots" in trainer.kind.dataset_fields:
        tasks = f"{trainer.kind.title.lower()} tasks of {config.train_shots} support points"
    else:  # a kind whose tasks are not episodes (optimizee problems, labelled batches, ...)
        tasks = trainer.kind.trains_on
    recipe = f" (recipe {config.algorithm.recipe})" if config.algorithm.recipe else ""
    training = config.training
    length = f"{training.steps} steps" if training.steps else "steps"
    if training.max_minutes:
        length += f" {'or' if training.steps else 'until'} a {training.max_minutes:g}-minute budget"
    printer.line(f"training {config.algorithm.name}{recipe} on {config.dataset.name}, {tasks}, {length} on "
                 f"{trainer.device}, in {trainer.precision.name} ({trainer.precision.reason})")
    _warn_about_data(printer, trainer)


def _warn_about_data(printer: ProgressPrinter, trainer) -> None:
    """Unreadable files and left-out class folders on stderr even with --quiet; the trainer lists every skipped
    file in the run folder."""
    from workbench.core.data.base import skipped_lines

    dataset = trainer.dataset
    skipped = list(getattr(dataset, "skipped_files", None) or [])
    lines = skipped_lines(skipped, 5, trainer.skipped_note)
    lines += list(getattr(dataset, "warnings", None) or [])
    if lines:
        printer.end()
        for line in lines:
            _say(line if line.startswith("  ") else f"warning: {line}")


def _record_printer(printer: ProgressPrinter, metric) -> Callable:
    def on_record(record) -> None:
        if record.event == "step":
            printer.update(record.step, record.total_steps, f"loss {record.loss:.3f} {metric.key} "
                           f"{metric.format(record.score)} {record.steps_per_s:.1f} steps/s", key="train",
                           eta_s=record.eta_s)
        else:
            printer.line(record.message)

    return on_record


def _test_after_training(args, trainer, final, interrupted: bool, printer: ProgressPrinter):
    """The final test evaluation as a JSON-ready dict (None when skipped); raises KeyboardInterrupt through."""
    from workbench.core.evaluation import evaluate_run

    if final.event not in ("finished", "budget") or args.no_eval or interrupted:
        return None
    # evaluate_run computes in the run's precision, as training did
    result = evaluate_run(trainer.run, trainer.store, device=trainer.config.training.device,
                          progress=printer.callback("test"))
    printer.end()
    summary = result.to_dict()
    # The headline, its setting and the kind's own breakdowns (extras, a comparison of networks or training sets);
    # per-class tables and confusion matrices stay in `workbench eval --json`.
    keep = ("kind", trainer.metric.key, "ci95", "episodes", "ways", "shots", "queries", "seed", "checkpoint",
            "mse_by_steps", "ci95_by_steps", "steps", "extras", "comparison", "scores", "intervals")
    return {key: summary[key] for key in keep if key in summary}


def steps_progress(done: int, total: int, compact: bool = False) -> str:
    """'120/500 steps', or '2,670 steps (until the budget)' for a run whose length is its time budget (total 0);
    ``compact`` for a table column: '120/500', '2,670 (budget)'."""
    if total:
        return f"{done:,}/{total:,}" + ("" if compact else " steps")
    return f"{done:,} (budget)" if compact else f"{done:,} steps (until the budget)"


def _report_training(args, trainer, final, test) -> None:
    run, config, metric = trainer.run, trainer.config, trainer.metric
    record = run.record()
    if args.json:
        _emit_json({"run": run.id, "name": record.name, "path": str(run.path), "status": record.status,
                    "kind": config.kind, "recipe": config.algorithm.recipe,
                    "event": final.event, "message": final.message, "steps": trainer.step,
                    "steps_total": config.training.steps, "metric": metric.key,
                    f"best_val_{metric.key}": trainer.best_val_score, "best_val_ci95": trainer.best_val_ci95,
                    "best_step": trainer.best_step, "elapsed_s": final.elapsed_s, "algorithm": config.algorithm.name,
                    "dataset": config.dataset.name, "device": str(trainer.device),
                    "precision": trainer.precision.to_dict(), "test": test,
                    "skipped": [{"path": path, "reason": reason}
                                for path, reason in getattr(trainer.dataset, "skipped_files", None) or []],
                    "warnings": list(getattr(trainer.dataset, "warnings", None) or []) + trainer.warnings})
        return
    print(f"run {run.id}: {record.status} after {steps_progress(trainer.step, config.training.steps)} "
          f"({format_duration(final.elapsed_s)})")
    if final.message and final.event != "finished":
        print(f"  {final.message}")
    if trainer.best_val_score is not None:
        print(f"  best validation: {metric.format(trainer.best_val_score, trainer.best_val_ci95)} "
              f"(step {trainer.best_step})")
    if test is not None:
        where = (f"{test['ways']}-way {test['shots']}-shot, {test['episodes']} episodes" if "ways" in test
                 else f"{test['shots']} support points, {test['episodes']} tasks")
        print(f"  test {metric.title}: {metric.format(test[metric.key], test['ci95'])} ({where})")
    print(f"  folder: {run.path}")


def _add_launch_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data-parallel training (torch.distributed)")
    group.add_argument("--nproc", type=int, default=1, metavar="N", help="Train in N processes on this host, each on "
                       "its share of every meta-batch (training.meta_batch must divide by the processes in all), "
                       "with gradients averaged: NCCL on CUDA (one GPU per process), gloo on the CPU. The steps are "
                       "one process's; rank 0 keeps the run.")
    group.add_argument("--nnodes", type=int, default=1, metavar="M", help="Hosts taking part; run the same command "
                       "on each, with the same --rdzv-endpoint.")
    group.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT", help="Where the hosts meet: one host's "
                       "address and a free port, the same on every host.")
    group.add_argument("--rdzv-id", default="", metavar="ID", help="A job id the hosts of one training share "
                       "(default 'workbench').")


def _launch_ranks(args, config, resume: str | None) -> int:
    """Start --nproc processes through torch's elastic launcher; each runs _train_and_report as one rank."""
    from workbench.core.errors import ConfigError
    from workbench.core.runs import RunStore
    from workbench.core.training.distributed import check_parallel, launch

    if args.nproc < 1 or args.nnodes < 1:
        raise ConfigError("--nproc", "give at least 1 process (--nproc) on at least 1 host (--nnodes)")
    check_parallel(config or RunStore().get(resume).config, args.nproc * args.nnodes, per_host=args.nproc)
    return launch(_train_and_report, (args, config, resume), nproc=args.nproc, nnodes=args.nnodes,
                  rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id, error_code=EXIT_USER_ERROR)


def _train_and_report(args, config, resume: str | None = None) -> int:
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer
    from workbench.core.training.distributed import DistributedContext, follow

    context = DistributedContext.from_env()  # a rank started by --nproc or torchrun
    if not context.active and getattr(args, "nproc", 1) * getattr(args, "nnodes", 1) > 1:
        return _launch_ranks(args, config, resume)
    if not context.is_leader:  # rank 0 writes, prints and decides when all stop
        together = follow(lambda: Trainer(config, resume=resume, distributed=context).run_all())
        return EXIT_OK if together else EXIT_INTERRUPTED
    printer = ProgressPrinter(enabled=not args.quiet)
    trainer = Trainer(config, RunStore(), resume=resume, progress=printer.callback("loading"), distributed=context)
    printer.end()
    _print_start(printer, trainer)
    if context.active:
        meta_batch = trainer.config.training.meta_batch
        printer.line(f"data-parallel: {context.world_size} processes, {meta_batch // context.world_size} of the "
                     f"{meta_batch} tasks of each step on each")
    run = trainer.run
    with _signals_stop(trainer, printer) as signalled:
        try:
            final = trainer.run_all(_record_printer(printer, trainer.metric))
        except KeyboardInterrupt:
            printer.end()
            _say(f"interrupted; run {run.id} was saved as stopped at step {trainer.step}")
            if trainer.final_record is not None:
                _report_training(args, trainer, trainer.final_record, None)
            return signalled["exit_code"] or EXIT_INTERRUPTED
        signalled["training"] = False
        interrupted = signalled["count"] > 0
        printer.end()
        try:
            test = _test_after_training(args, trainer, final, interrupted, printer)
        except KeyboardInterrupt:
            printer.end()
            _say(f"test evaluation interrupted; run {run.id} is saved")
            _report_training(args, trainer, final, None)
            return signalled["exit_code"] or EXIT_INTERRUPTED
    _report_training(args, trainer, final, test)
    if final.event == "diverged":
        _say(f"error: {final.message}")
        return EXIT_USER_ERROR
    if interrupted:
        _say(f"stopped; resume with: workbench runs resume {run.id}")
        return signalled["exit_code"]
    return EXIT_OK


def cmd_train(args) -> int:
    config = config_from_args(args)
    if args.export_config:
        if args.export_config == "-":
            sys.stdout.write(config.to_toml())
        else:
            path = config.save(Path(args.export_config).expanduser())
            if args.json:
                _emit_json({"config": str(path)})
            else:
                _say(f"wrote {path}")
        return EXIT_OK
    return _train_and_report(args, config)


def cmd_resume(args) -> int:
    from workbench.core.runs import RunStore
    from workbench.core.training.distributed import DistributedContext

    if not DistributedContext.from_env().is_leader:  # a rank under torchrun: rank 0 reads the run and shares it
        return _train_and_report(args, None, resume=args.run)
    run = RunStore().get(args.run)
    training = {}
    for name in ("steps", "max_minutes", "device", "precision", "threads"):
        value = getattr(args, name)
        if value is not None:
            training[name] = value
    dataset = {"root": _absolute_root(args.data_root, [Path.cwd()])} if args.data_root else {}
    config = run.config.replace(training=training, dataset=dataset) if (training or dataset) else None
    return _train_and_report(args, config, resume=run.id)


def _eval_json(result) -> dict:
    """The kind's evaluation JSON (classification: accuracy and per-class numbers; regression: MSE by steps),
    without the bulky fields, with algorithm additions at the top level."""
    data = result.to_dict()
    for key in ("confusion", "confusion_classes", "extras"):
        data.pop(key, None)
    data.update(result.extras)  # algorithm additions (e.g. "weights") sit at the top level
    return data


def _eval_threads(args, run) -> int:
    """--threads, or with 0 the run's own training threads (a tiny regression MLP runs on one), else automatic."""
    if args.threads or isinstance(run, str):
        return args.threads
    return run.config.training.threads


def _print_evaluation(result, label: str) -> None:
    print(f"{label} ({result.checkpoint} checkpoint): {result.summary()}")
    other = result.extras.get("evaluated_on")
    if other:
        where = f" ({other['root']})" if other.get("root") else ""
        print(f"  tested on {other['dataset']}{where}; trained on {other['trained_on']}")
    if hasattr(result, "per_class_extremes"):
        best, worst = result.per_class_extremes(3)
        if worst:
            print("  hardest classes: " + ", ".join(f"{name} {100 * acc:.0f}%" for name, acc in worst))
            print("  easiest classes: " + ", ".join(f"{name} {100 * acc:.0f}%" for name, acc in best))
    elif hasattr(result, "setting_text"):  # a kind that words its own setting
        print(f"  {result.setting_text()}")
    elif getattr(result, "kind", "") == "regression":  # the setting its numbers are for
        print(f"  K = {result.shots} support points, {result.queries} query points, {result.episodes} "
              f"{result.split} tasks, seed {result.seed}")
    for line in _extras_lines(result.extras):
        print(line)


def _extras_lines(extras: dict) -> list[str]:
    """An evaluation's extras for the terminal: a curve ("<metric>_by_<x>": {x: value}, with "ci95_by_<x>",
    "episodes_by_<x>" and a "<x>_note") one point a line, anything else as "key: value"."""
    lines, shown = [], {"evaluated_on"}
    for key, points in extras.items():
        metric, by, x = key.partition("_by_")
        if not by or metric in ("ci95", "episodes") or not isinstance(points, dict):
            continue
        intervals, counts = extras.get(f"ci95_by_{x}") or {}, extras.get(f"episodes_by_{x}") or {}
        shown |= {key, f"ci95_by_{x}", f"episodes_by_{x}", f"{x}_note"}
        lines.append(f"  {metric} by {x}:")
        for point, value in points.items():
            ci = intervals.get(point)
            text = _pct(value, ci) if metric == "accuracy" else f"{value:.4g}" + (f" ± {ci:.2g}" if ci else "")
            n = counts.get(point)
            count = f" ({n:,} episode{'s' if n != 1 else ''})" if n is not None else ""
            lines.append(f"    {point:<10} {text}{count}")
        if extras.get(f"{x}_note"):
            lines.append(f"    {extras[f'{x}_note']}")
    return lines + [f"  {key}: {value}" for key, value in extras.items() if key not in shown]


def _epsilons(text: str) -> list[float]:
    """--adversarial's comma-separated budgets, each in [0, 1]."""
    from workbench.core.errors import ConfigError

    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError("--adversarial", f"'{text}' is not a list of numbers; give budgets in pixel units of a "
                          "0-1 scale, e.g. 0,0.01,0.03") from None
    if not values or any(not 0 <= value <= 1 for value in values):
        raise ConfigError("--adversarial", f"'{text}': each budget must lie in [0, 1] (pixel units of a 0-1 scale), "
                          "e.g. 0,0.01,0.03")
    return sorted(set(values))


def cmd_eval(args) -> int:
    from workbench.core.device import configure_cpu_threads, resolve_device
    from workbench.core.precision import compute_in
    from workbench.core.errors import ConfigError
    from workbench.core.evaluation import attack_curve, evaluate_run
    from workbench.core.runs import RunStore

    printer = ProgressPrinter(enabled=not args.quiet)
    store = RunStore()
    is_file = args.run.endswith(".pt") and Path(args.run).expanduser().is_file()
    run = args.run if is_file else store.get(args.run)
    epsilons = _epsilons(args.adversarial) if args.adversarial is not None else []
    if epsilons and (args.dataset or args.data_root):
        raise ConfigError("--adversarial", "attacks are measured on the run's own dataset; leave out --dataset and "
                          "--data-root (or evaluate on the other dataset without --adversarial)")
    if args.attack_steps < 1:
        raise ConfigError("--attack-steps", f"{args.attack_steps} is too small; use at least 1")
    device = resolve_device(args.device)
    if device.type == "cpu":
        configure_cpu_threads(_eval_threads(args, run))
    precision = _eval_precision(args, run, device)
    root = _absolute_root(args.data_root, [Path.cwd()]) if args.data_root else None
    save = not args.no_save
    result = evaluate_run(run, store, episodes=args.episodes, ways=args.ways, shots=args.shots,
                          queries=args.queries, seed=args.seed, device=args.device, checkpoint=args.checkpoint,
                          progress=printer.callback("eval"), save=save and not epsilons, dataset=args.dataset,
                          data_root=root, episode_domains=args.episode_domains, precision=precision.requested)
    with compute_in(precision.dtype):  # the attack's forward passes, in the same precision
        if epsilons:  # saved once, with the curve
            curve = attack_curve(run, result, epsilons, attack=args.attack, steps=args.attack_steps,
                                 device=args.device, store=store, progress=printer.callback("attack"))
            result.extras.update(curve.extras())
            if save and not is_file:
                run.save_evaluation(result)
    printer.end()
    if args.json:
        _emit_json({**_eval_json(result), "precision": precision.to_dict()})
        return EXIT_OK
    _print_evaluation(result, f"{'' if is_file else 'run '}{result.run}")
    print(f"  precision: {precision.name} ({precision.reason})")
    return EXIT_OK


def _eval_precision(args, run, device):
    """--precision, else the run's training.precision, resolved for the run's algorithm on ``device``."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.checkpoints import payload_algorithm, read_checkpoint
    from workbench.core.precision import resolve_precision

    if isinstance(run, str):  # a checkpoint file: its algorithm, and auto unless asked
        name, requested = payload_algorithm(read_checkpoint(Path(run).expanduser())), args.precision or "auto"
    else:
        name, requested = run.config.algorithm.name, args.precision or run.config.training.precision
    return resolve_precision(requested, device, get_algorithm(name).auto_reduced_precision)


def _runs_table(records) -> str:
    headers = ("ID", "NAME", "STATUS", "KIND", "ALGORITHM", "DATASET", "SETTING", "STEPS", "BEST VAL", "TEST")
    rows = []
    for r in records:
        test = "-"
        if r.test_mse is not None:
            test = f"MSE {r.test_mse:.3g}±{r.test_ci95 or 0:.2g}"
        elif r.test_accuracy is not None:
            test = f"{100 * r.test_accuracy:.1f}±{100 * (r.test_ci95 or 0):.1f}"
            if (r.test_ways, r.test_shots) != (r.ways, r.shots):
                test += f" ({r.test_ways}w{r.test_shots}s)"
        best = "-"
        if r.best_val_mse is not None:
            best = f"MSE {r.best_val_mse:.3g}"
        elif r.best_val_accuracy is not None:
            best = f"{100 * r.best_val_accuracy:.1f}"
        setting = f"K={r.shots}" if r.best_val_mse is not None or r.test_mse is not None else f"{r.ways}w{r.shots}s"
        rows.append((r.id, r.name or "-", r.status, r.kind or "classification", r.algorithm, r.dataset, setting,
                     steps_progress(r.steps_done, r.steps_total, compact=True), best, test))
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (headers, *rows)]
    return "\n".join(lines)


def _runs_list(store, args) -> int:
    records = store.list()
    if args.json:
        _emit_json([r.to_dict() for r in records])
    elif records:
        print(_runs_table(records))
    else:
        _say(f"no runs yet in {store.runs_dir}; start one with `workbench train`")
    return EXIT_OK


def _runs_show(store, args) -> int:
    from workbench.core.kinds import get_kind_class

    run = store.get(args.run)
    record = run.record()
    metrics = run.read_metrics()
    metric = get_kind_class(record.kind or "classification").metric
    validations = [m for m in metrics if m.get("event") == "validation"]
    info = {**record.to_dict(), "config": run.config.to_dict(), "evaluations": run.evaluations(),
            "checkpoints": {kind: str(run.checkpoint_path(kind)) for kind in ("best", "last")
                            if run.has_checkpoint(kind)},
            "validations": [{"step": m["step"], metric.key: m.get(f"val_{metric.key}"), "ci95": m.get("val_ci95")}
                            for m in validations],
            "metrics_records": len(metrics)}
    if args.json:
        _emit_json(info)
        return EXIT_OK
    print(_runs_table([record]))
    print(f"folder: {run.path}")
    if record.message:
        print(f"message: {record.message}")
    for v in info["validations"][-5:]:
        print(f"validation at step {v['step']}: {metric.format(v[metric.key], v['ci95'])}")
    for e in info["evaluations"]:
        where = (f"{e['ways']}-way {e['shots']}-shot, {e['episodes']} episodes" if "ways" in e
                 else f"{e.get('shots')} points, {e['episodes']} tasks")
        print(f"evaluation {where} (seed {e['seed']}, {e.get('checkpoint') or 'best'}): "
              f"{metric.format(e.get(metric.key), e.get('ci95'))}")
    return EXIT_OK


def _runs_rename(store, args) -> int:
    record = store.rename(args.run, args.new_name)
    if args.json:
        _emit_json(record.to_dict())
    else:
        _say(f"run {record.id} is now called '{record.name}'")
    return EXIT_OK


def _runs_delete(store, args) -> int:
    run = store.get(args.run)
    if not args.yes:
        if not sys.stdin.isatty():
            from workbench.core.errors import WorkbenchError

            raise WorkbenchError(f"deleting run {run.id} needs confirmation; add --yes")
        answer = input(f"delete run {run.id} and its folder {run.path}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _say("nothing deleted")
            return EXIT_OK
    store.delete(run.id)
    if args.json:
        _emit_json({"deleted": run.id})
    else:
        _say(f"deleted run {run.id}")
    return EXIT_OK


def _runs_compare(store, args) -> int:
    records = store.compare(args.runs)
    if args.json:
        _emit_json([r.to_dict() for r in records])
    else:
        print(_runs_table(records))
    return EXIT_OK


def cmd_runs(args) -> int:
    from workbench.core.runs import RunStore

    action = args.runs_command or "list"
    if action == "resume":
        return cmd_resume(args)
    actions = {"list": _runs_list, "show": _runs_show, "rename": _runs_rename, "delete": _runs_delete,
               "compare": _runs_compare}
    return actions[action](RunStore(), args)


def cmd_kinds(args) -> int:
    from workbench.core.catalog import kinds_info

    infos = kinds_info()
    if args.json:
        _emit_json(infos)
        return EXIT_OK
    for item in infos:
        print(f"  {item['name']:<16} {item['title']} (trains on {item['trains_on']}; reports "
              f"{item['metric']['title']}; datasets: {', '.join(item['datasets']) or 'none'})")
    return EXIT_OK


def cmd_algorithms(args) -> int:
    from workbench.core.algorithms import algorithms_by_family

    if args.kind:
        from workbench.core.kinds import get_kind_class

        get_kind_class(args.kind)  # an unknown kind is an error naming the known ones
    grouped = algorithms_by_family(args.kind)
    infos = [{**cls.info(), "family_title": family.title} for family, classes in grouped.items() for cls in classes]
    if args.json:
        _emit_json(infos)
        return EXIT_OK
    for family, classes in grouped.items():
        if not classes:
            continue
        print(f"{family.title}:")
        for cls in classes:
            print(f"  {cls.name:<20} {cls.summary}")
            print(f"  {'':<20} kinds: {', '.join(cls.kinds)}; recipes: "
                  f"{', '.join(sorted({r.name for r in cls.recipes})) or 'none'}")
    return EXIT_OK


def cmd_datasets(args) -> int:
    from workbench.core.catalog import datasets_info

    infos = []
    for info in datasets_info(args.kind):
        try:
            module = info["name"] and _dataset_module(info["name"])
            available = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            available = False
        infos.append({**info, "available": available})
    if args.json:
        _emit_json(infos)
        return EXIT_OK
    for item in infos:
        flags = []
        if item["needs_root"]:
            flags.append("needs --data-root")
        if item["downloadable"]:
            flags.append("can --download")
        if not item["available"]:
            flags.append("not installed")
        print(f"  {item['name']:<14} {item['title']} ({', '.join(item['kinds'])})" +
              (f" [{', '.join(flags)}]" if flags else ""))
    return EXIT_OK


def _dataset_module(name: str) -> str:
    from workbench.core.data import dataset_info

    return dataset_info(name).module_path


def cmd_plugins(args) -> int:
    from workbench.core.catalog import load_everything

    entries = load_everything()
    if args.json:
        _emit_json([entry.to_dict() for entry in entries])
        return EXIT_OK
    if not entries:
        print("No plugins installed. Packages add algorithms, datasets and kinds through the entry-point groups "
              "workbench.algorithms, workbench.datasets and workbench.kinds (see docs/write-an-algorithm.md).")
        return EXIT_OK
    for entry in entries:
        status = "ok" if entry.ok else f"BROKEN: {entry.error}"
        print(f"  {entry.group:<10} {entry.name:<24} {entry.distribution or '?':<24} {status}")
    return EXIT_OK


def demo_config(steps: int = 300, episodes: int = 300, threads: int = 0):
    from workbench.core.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "name": "demo",
        "dataset": {"name": "glyphs", "ways": 5, "shots": 1, "queries": 15},
        "algorithm": {"name": "protonet"},
        "training": {"steps": steps, "val_interval": max(1, steps // 3), "val_episodes": max(1, min(50, episodes)),
                     "checkpoint_interval": max(1, steps), "lr": 1e-3, "threads": threads},
        "evaluation": {"episodes": episodes},
    })


def cmd_demo(args) -> int:
    from workbench.core.evaluation import evaluate_run
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer

    printer = ProgressPrinter(enabled=not args.quiet)
    config = demo_config(args.steps, args.episodes, getattr(args, "threads", 0))
    printer.line(f"demo: Prototypical Networks on the built-in glyphs, 5-way 1-shot, {args.steps} steps")
    store = RunStore()
    trainer = Trainer(config, store, progress=printer.callback("loading"))
    printer.end()
    with _signals_stop(trainer, printer) as signalled:
        final = trainer.run_all(lambda r: printer.update(r.step, r.total_steps, f"loss {r.loss:.3f}", key="demo",
                                                         eta_s=r.eta_s) if r.event == "step" else None)
    printer.end()
    if final.event not in ("finished", "budget"):
        _say(f"demo {final.event}: {final.message}")
        return (signalled["exit_code"] or EXIT_INTERRUPTED) if final.event == "stopped" else EXIT_USER_ERROR
    from workbench.core.precision import compute_in

    with compute_in(trainer.precision.dtype):  # tested as it trained
        result = evaluate_run(trainer.run, store, device=config.training.device, progress=printer.callback("test"))
    printer.end()
    if args.json:
        _emit_json({"run": trainer.run.id, "path": str(trainer.run.path), **_eval_json(result)})
    else:
        print(f"ProtoNet on glyphs after {trainer.step} steps: {result.summary()} (chance: 20%)")
        print(f"run {trainer.run.id} is saved in {trainer.run.path}; open it in the GUI or run "
              f"`workbench eval {trainer.run.id} --ways 20`")
    return EXIT_OK


def _delegate(module_name: str, what: str, rest: list[str]) -> int:
    from workbench.core.errors import WorkbenchError

    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise WorkbenchError(f"{what} is not available in this installation ({module_name} is missing)")
    module = importlib.import_module(module_name)
    entry = getattr(module, "main", None)
    if entry is None:
        raise WorkbenchError(f"{what} is not available: {module_name} has no main()")
    return int(entry(rest) or 0)


def _load_gui_app():
    """workbench.gui.app when Qt and the GUI are installed and importable, else None."""
    try:
        if importlib.util.find_spec("PySide6") is None or importlib.util.find_spec("workbench.gui.app") is None:
            return None
        return importlib.import_module("workbench.gui.app")
    except (ImportError, ValueError, OSError) as exc:  # e.g. Qt's system libraries are missing
        _say(f"the GUI cannot start here ({exc})")
        return None


def _has_display() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_gui_or_demo(argv: list[str]) -> int:
    if "--startup-time" in argv and not _has_display():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a measurement needs no visible window
    if not _has_display():
        # An offscreen window nobody can see would just hang; the demo shows the engine working instead.
        try:
            from workbench.gui.platform_check import no_display_message

            _say(no_display_message())
        except ImportError:
            _say("no display found (DISPLAY is unset), so the window cannot open")
        _say("Running the headless demo instead (workbench demo).")
        return cmd_demo(argparse.Namespace(steps=300, episodes=300, threads=0, json=False, quiet=False))
    app = _load_gui_app()
    if app is not None:
        return int(app.main(argv) or 0)
    _say("the GUI is not available here (PySide6 or workbench.gui is missing); running the demo instead")
    return cmd_demo(argparse.Namespace(steps=300, episodes=300, threads=0, json=False, quiet=False))


def _sweep_spec(args):
    from workbench.core.sweeps import SweepError, SweepSpec, load_spec

    if args.resume:
        spec = load_spec(args.storage_url, args.resume)
    elif args.study_file:
        spec = SweepSpec.load(args.study_file)
    else:
        raise SweepError("give a study file (workbench sweep STUDY.toml), --resume NAME or --list")
    overrides = {"trials": args.trials, "workers": args.workers, "threads": args.threads,
                 "ray_address": args.ray_address}
    for name, value in overrides.items():
        if value is not None:
            setattr(spec.settings, name, value)
    return spec


def _trial_line(trial) -> str:
    value = "" if trial.value is None else f" {trial.value:.4g}"
    params = ", ".join(f"{path.rsplit('.', 1)[-1]}={value!r}" for path, value in trial.params.items())
    error = f": {trial.error}" if trial.error else ""
    return f"trial {trial.number} {trial.state}{value} ({params}){error}"


def cmd_sweep(args) -> int:
    from workbench.core.runs import default_home
    from workbench.core.sweeps import StudyRunner, default_storage, list_studies

    home = default_home()
    args.storage_url = args.storage or default_storage(home)
    if args.list:
        studies = list_studies(args.storage_url)
        if args.json:
            _emit_json({"storage": args.storage_url, "studies": studies})
        for study in [] if args.json else studies:
            best = "" if study["best_value"] is None else f", best {study['best_value']:.4g}"
            print(f"{study['name']}: {study['trials']} trials{best} (started {study['created']})")
        return EXIT_OK
    runner = StudyRunner(_sweep_spec(args), home, args.storage_url)
    reported: set[tuple[int, str]] = set()
    last = None
    for last in runner.updates():
        for trial in last.trials:
            if trial.state in ("complete", "pruned", "failed") and (trial.number, trial.state) not in reported:
                reported.add((trial.number, trial.state))
                if not args.quiet:
                    _say(_trial_line(trial))
    best = last.best()
    if args.json:
        _emit_json({**last.to_dict(), "storage": args.storage_url})
    elif not args.quiet:
        counts = ", ".join(f"{n} {state}" for state, n in last.counts().items() if n)
        _say(f"study {last.name}: {counts}")
        if best is not None:
            print(f"best: {_trial_line(best)}; run {best.run_id} (test it once: workbench eval {best.run_id})")
    return EXIT_OK if best is not None else EXIT_USER_ERROR


def _dispatch(args, argv: list[str]) -> int:
    command = args.command
    if command == "sweep":
        return cmd_sweep(args)
    if command == "train":
        return cmd_train(args)
    if command == "eval":
        return cmd_eval(args)
    if command == "runs":
        return cmd_runs(args)
    if command == "kinds":
        return cmd_kinds(args)
    if command == "algorithms":
        return cmd_algorithms(args)
    if command == "plugins":
        return cmd_plugins(args)
    if command == "datasets":
        return cmd_datasets(args)
    if command == "demo":
        return cmd_demo(args)
    if command in DELEGATED:
        return _delegate(*DELEGATED[command], args.rest)
    raise AssertionError(command)


def main(argv: list[str] | None = None) -> int:
    from workbench.core.errors import WorkbenchError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        # These commands parse their own arguments.
        module_name, what = DELEGATED[argv[0]]
        try:
            return _delegate(module_name, what, argv[1:])
        except WorkbenchError as exc:
            _say(f"error: {exc}")
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        # No command: the GUI gets the arguments (e.g. Qt options).
        if not argv or argv[0].startswith("-"):
            try:
                return _open_gui_or_demo(argv)
            except WorkbenchError as exc:
                _say(f"error: {exc}")
                return EXIT_USER_ERROR
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage or help
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        return _dispatch(args, argv)
    except WorkbenchError as exc:
        _say(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("workbench."):
            _say(f"error: {exc.name} is missing from this installation")
            return EXIT_USER_ERROR
        traceback.print_exc()
        return EXIT_UNEXPECTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        traceback.print_exc()
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    raise SystemExit(main())
