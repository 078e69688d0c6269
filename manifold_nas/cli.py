"""The ``manifold-nas`` command line.

Every user mistake ends in one line on stderr and exit status 2, never a
traceback; ``--debug`` (or ``MANIFOLD_NAS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from manifold_nas.errors import UserInputError

__all__ = ["main"]

KINDS = (
    "opsets",
    "relaxations",
    "optimizers",
    "selectors",
    "strategies",
    "datasets",
    "networks",
)
#: the demo's config ships inside the package, so ``manifold-nas demo`` works from a wheel
DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "japanese_vowels.yaml"


def _registries() -> dict[str, Any]:
    from manifold_nas.plugins import all_registries

    return all_registries()


def _describe(obj: Any) -> str:
    text = getattr(obj, "description", "") or (getattr(obj, "__doc__", "") or "")
    return text.strip().splitlines()[0] if text.strip() else ""


def cmd_list(args: argparse.Namespace) -> int:
    registries = _registries()
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        print(f"{kind}:")
        for name, obj in registries[kind].items():
            if kind == "opsets":
                print(f"  {name:<18} {', '.join(obj.op_names)}")
            else:
                print(f"  {name:<18} {_describe(obj)}")
    return 0


def _default_out(config_path: str) -> Path:
    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _search(config_path: str, overrides: Sequence[str], out: Path, resume: bool, quiet: bool):
    from manifold_nas.config import load_config
    from manifold_nas.search import search

    config = load_config(config_path, overrides)
    result = search(config, out, resume=resume, quiet=quiet)
    return config, result.genotype, result.summary


def cmd_search(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else _default_out(args.config)
    _, genotype, summary = _search(args.config, args.overrides, out, args.resume, args.quiet)
    print(genotype.describe())
    print(f"search finished: {json.dumps(summary['final'])} -> {out}")
    return 0


def _load_genotype_and_config(target: str, overrides: Sequence[str]):
    from manifold_nas.config import apply_overrides, load_config, parse_config
    from manifold_nas.genotype import Genotype

    path = Path(target)
    if not path.exists():
        raise UserInputError(f"not found: {path}")
    if path.is_dir():
        genotype = Genotype.load(path / "genotype.json")
        config = parse_config(
            apply_overrides(genotype.config, overrides), str(path / "genotype.json")
        )
        return genotype, config, path
    if path.suffix in (".yaml", ".yml"):
        config = load_config(path, overrides)
        genotype = Genotype(
            opset=str(config.network.get("opset", "")), cells={}, config=config.to_dict()
        )
        return genotype, config, None
    genotype = Genotype.load(path)
    config = parse_config(apply_overrides(genotype.config, overrides), str(path))
    return genotype, config, None


def cmd_train(args: argparse.Namespace) -> int:
    from manifold_nas.opset import OPSETS
    from manifold_nas.training import train_derived

    genotype, config, run_dir = _load_genotype_and_config(args.target, args.overrides)
    if genotype.cells:
        OPSETS.get(genotype.opset)
    if args.out:
        out = Path(args.out)
    elif run_dir is not None:
        out = run_dir / "retrain"
    else:
        out = _default_out(args.target)
    summary = train_derived(genotype, config, out, quiet=args.quiet)
    print(f"test: {json.dumps(summary['test'])}  parameters: {summary['parameters']} -> {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from manifold_nas.evaluation import evaluate_run

    result = evaluate_run(args.run_dir)
    print(json.dumps(result, indent=2))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from manifold_nas.plotting import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from manifold_nas.evaluation import predict_run

    for path in predict_run(args.run_dir, args.inputs, args.output):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from manifold_nas.plotting import plot_run
    from manifold_nas.training import train_derived

    config_path = args.config or str(DEMO_CONFIG)
    out = Path(args.out) if args.out else _default_out(config_path)
    print(f"demo: search with {config_path} -> {out}")
    config, genotype, summary = _search(config_path, args.overrides, out, False, args.quiet)
    print("derived genotype:")
    print(genotype.describe())
    trained = train_derived(genotype, config, out / "retrain", quiet=args.quiet)
    plots = plot_run(out)
    primary = next(iter(trained["test"]))
    print(
        f"retrained from scratch: test {primary} = {trained['test'][primary]:.4f}, "
        f"parameters = {trained['parameters']}, search {summary['search_seconds']:.0f} s, "
        f"train {trained['train_seconds']:.0f} s"
    )
    print("figures: " + ", ".join(str(p) for p in plots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="manifold-nas", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search a cell on a config")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="section.key=value")
    p.add_argument("--out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "train", help="retrain a genotype (run dir, genotype.json or fixed-network config)"
    )
    p.add_argument("target")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test a run's retrained network (or its supernet)")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("list", help="list registered components")
    p.add_argument("kind", nargs="?", choices=KINDS)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plot", help="draw alphas.png, diagnostics.png and cell_<type>.png")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("predict", help="segment NIfTI images with a volumetric run")
    p.add_argument("run_dir")
    p.add_argument("inputs", nargs="+", help="images or folders of images")
    p.add_argument("--output", required=True, help="output file (one image) or folder")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="search, retrain and test on the embedded default")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--config")
    p.add_argument("--out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """Warnings of the library (resume, resampling, data fixes) as one stderr line each."""
    logger = logging.getLogger("manifold_nas")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("manifold-nas: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (``search CFG --out RUN seed=1``)
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _log_to_stderr()
    debug = args.debug or os.environ.get("MANIFOLD_NAS_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except UserInputError as err:
        if debug:
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"manifold-nas: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("manifold-nas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
