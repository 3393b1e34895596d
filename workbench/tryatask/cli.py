"""``workbench try MODEL --support NAME=DIR ... --query FILE ...``: classify your own images with a trained model."""

from __future__ import annotations

import argparse
import json
import sys

from workbench.core.errors import WorkbenchError

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from workbench.core.tryatask import DEFAULT_DEMO, DEFAULT_SEED, DEMO_MODELS

    parser = argparse.ArgumentParser(
        prog="workbench try",
        description="Adapt a trained model to a few labelled images (the support sets) and classify queries. "
                    "Images are preprocessed exactly like the model's training data; for a model trained on "
                    "handwriting, the strokes of drawings, photos and scans are found and centred and scaled like "
                    "its training drawings.")
    parser.add_argument("model", metavar="RUN_OR_CHECKPOINT",
                        help=f"Run id (or prefix), run name, run folder, .pt checkpoint, or a bundled model: demo "
                             f"(= {DEFAULT_DEMO}), {', '.join(DEMO_MODELS)}.")
    parser.add_argument("--support", nargs="+", required=True, metavar="NAME=DIR",
                        help="A class and its support images: a folder (every file in it) or one image file. "
                             "Repeat NAME=DIR for each class.")
    parser.add_argument("--query", nargs="+", required=True, metavar="FILE",
                        help="Images to classify (files or folders), reported in this order.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"Seed for adaptation; the same seed gives the same result (default {DEFAULT_SEED}).")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="Which checkpoint of a run.")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto.")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch; 0 leaves the default.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    return parser


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_support(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name.strip() or not folder:
            raise WorkbenchError(f"--support {value!r}: expected NAME=DIR, e.g. --support cat=photos/cats")
        pairs.append((name.strip(), folder))
    return pairs


def run(args) -> int:
    import torch

    from workbench.core.runs import load_model
    from workbench.core.device import resolve_device
    from workbench.core.tryatask import Task, TaskError, classify, resolve_model_source

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    task = Task()
    for name, folder in parse_support(args.support):
        task.add_class(name)
        task.add_support_files(name, [folder])
    task.add_query_files(args.query)
    model = load_model(resolve_model_source(args.model), resolve_device(args.device), kind=args.checkpoint)
    try:
        result = classify(model, task, seed=args.seed)
    except TaskError as exc:  # every unusable file on its own line, as when classifying works
        for label, reason in exc.problems:
            _say(f"skipped {label}: {reason}")
        raise WorkbenchError(exc.headline) from None
    for label, reason in result.problems:
        _say(f"skipped {label}: {reason}")
    if args.json:
        payload = {"predictions": [p.to_dict() for p in result.predictions],
                   "skipped": [{"file": label, "reason": reason} for label, reason in result.problems]}
        print(json.dumps(payload))
        return EXIT_OK
    names = result.classes
    width = max(len("query"), *(len(p.query) for p in result.predictions))
    columns = [max(6, len(n)) for n in names]
    print(f"{'query':<{width}}  {'predicted':<{max(9, *map(len, names))}}  "
          + "  ".join(f"{n:>{c}}" for n, c in zip(names, columns)))
    for p in result.predictions:
        print(f"{p.query:<{width}}  {p.predicted:<{max(9, *map(len, names))}}  "
              + "  ".join(f"{p.probabilities[n]:>{c}.1%}" for n, c in zip(names, columns)))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already explained
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
    try:
        return run(args)
    except WorkbenchError as exc:
        _say(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
