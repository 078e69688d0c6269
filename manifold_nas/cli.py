"""The ``manifold-nas`` command line.

Every user mistake ends in one line on stderr and exit status 2, never a
traceback; ``--debug`` (or ``MANIFOLD_NAS_DEBUG=1``) shows the traceback.

A Ctrl-C or SIGTERM is one line and exit status 130 or 143 from the first
line of :func:`main` on; the console script imports this module before, so
it imports next to nothing (argparse, logging, json where they are used).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from manifold_nas.errors import DiskFullError, UserInputError
from manifold_nas.run.interrupts import (
    deferred_signals,
    raise_on_sigterm,
    restore_sigterm,
    signal_exit,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

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
    import time

    return Path("runs") / f"{Path(config_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _search(config_path: str, overrides: Sequence[str], out: Path, resume: bool, quiet: bool):
    from manifold_nas.config import load_config
    from manifold_nas.search import search

    config = load_config(config_path, overrides)
    result = search(config, out, resume=resume, quiet=quiet)
    return config, result.genotype, result.summary


#: set by a command that can be resumed: (checkpoint path, the command that resumes it)
_RESUME: dict[str, Any] = {}


def _resumable(checkpoint: Path, command: Sequence[str]) -> None:
    import shlex

    _RESUME.update(checkpoint=checkpoint, command=" ".join(shlex.quote(c) for c in command))


def _interrupted_message(signal_name: str) -> str:
    if not _RESUME:
        return f"manifold-nas: interrupted ({signal_name})"
    checkpoint, command = _RESUME["checkpoint"], _RESUME["command"]
    if checkpoint.exists():
        return (
            f"manifold-nas: interrupted ({signal_name}); last checkpoint {checkpoint}; "
            f"resume with: {command}"
        )
    return (
        f"manifold-nas: interrupted ({signal_name}) before the first checkpoint; rerun: {command}"
    )


def cmd_search(args: argparse.Namespace) -> int:
    import json

    out = Path(args.out) if args.out else _default_out(args.config)
    _resumable(
        out / "checkpoint.pt",
        ["manifold-nas", "search", args.config, *args.overrides, "--out", str(out), "--resume"],
    )
    _, genotype, summary = _search(args.config, args.overrides, out, args.resume, args.quiet)
    if _is_main_process():
        print(genotype.describe())
        print(f"search finished: {json.dumps(summary['final'])} -> {out}")
    return 0


def _is_main_process() -> bool:
    """False on the ranks > 0 of a torchrun launch, which stay silent.

    Read from torchrun's ``WORLD_SIZE``/``RANK`` like
    :func:`~manifold_nas.run.distributed.current_world`, but without torch or
    a process group: the error boundary asks it too.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"


def _load_genotype_and_config(target: str, overrides: Sequence[str]):
    from manifold_nas.config import apply_overrides, load_config, parse_config
    from manifold_nas.space.genotype import Genotype

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
    import json

    from manifold_nas.run.retrain import train_derived
    from manifold_nas.space.opset import OPSETS

    genotype, config, run_dir = _load_genotype_and_config(args.target, args.overrides)
    if genotype.cells:
        OPSETS.get(genotype.opset)
    if args.out:
        out = Path(args.out)
    elif run_dir is not None:
        out = run_dir / "retrain"
    else:
        out = _default_out(args.target)
    _resumable(
        out / "checkpoint.pt",
        ["manifold-nas", "train", args.target, *args.overrides, "--out", str(out), "--resume"],
    )
    summary = train_derived(genotype, config, out, quiet=args.quiet, resume=args.resume)
    if _is_main_process():
        print(f"test: {json.dumps(summary['test'])}  parameters: {summary['parameters']} -> {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Check a config end to end without training: keys, data, network, strategy."""
    from manifold_nas.config import load_config
    from manifold_nas.cost.measure import count_parameters
    from manifold_nas.run.context import Run, build_network
    from manifold_nas.search import build_strategy, check_config

    config = load_config(args.config, args.overrides)
    check_config(config)
    strategy = build_strategy(config)
    run = Run(config, quiet=True)
    bundle = run.bundle
    print(
        f"data {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test samples, "
        f"sample shape {tuple(bundle.sample_shape)}, {bundle.num_classes} classes"
    )
    network, _ = build_network(config, run.bundle)
    specs = getattr(network, "arch_specs", {}) or {}
    space = ", ".join(f"{k}: {len(s.edges)}x{len(s.ops)}" for k, s in specs.items()) or "none"
    print(
        f"network {config.network['name']} ({run.opset.name}): "
        f"{count_parameters(network):,} parameters; search space {space}"
    )
    x, y = run.inputs(next(iter(run.loader(bundle.train, 2, False))))
    try:
        output = network(x, _uniform_weights(specs, run.dtype)) if specs else network(x)
        run.task.loss(output, y).backward()
    except Exception as err:
        raise UserInputError(
            f"network {config.network['name']!r} fails on a batch of {bundle.name}: "
            f"{type(err).__name__}: {_first_line(err)}"
        ) from err
    print(f"one training step on a batch of 2: output shape {tuple(output.shape)}")
    if specs:
        strategy.setup(run)
    print(f"strategy {strategy.name}: ready")
    return 0


def _uniform_weights(specs, dtype):
    import torch

    return {k: torch.full(s.shape, 1.0 / len(s.ops), dtype=dtype or torch.float32)
            for k, s in specs.items()}  # fmt: skip


def cmd_cost(args: argparse.Namespace) -> int:
    """Print the measured per-op cost table of a config's or run's search space.

    The LUT is cached as ``cost_lut.json`` in ``--out`` or the run directory
    (not cached for a config without ``--out``); a run with a genotype also
    gets its derived network measured end to end.
    """
    from manifold_nas.cost.budget import network_cost_values
    from manifold_nas.cost.table import (
        CostLUT,
        build_cost_table,
        derived_cost,
        format_cost_table,
        genotype_choices,
        measure_network,
    )
    from manifold_nas.run.context import Run

    if args.repeats < 1 or args.warmup < 0:
        raise UserInputError("--repeats must be >= 1 and --warmup >= 0")
    genotype, config, run_dir = _load_genotype_and_config(args.target, args.overrides)
    out = Path(args.out) if args.out else run_dir
    run = Run(config, quiet=True)
    network = run.build_searchable().to(run.device)
    x = run.example_input()
    latency = not args.no_latency
    lut = CostLUT(out)
    table = build_cost_table(
        network, x, lut=lut, latency=latency, warmup=args.warmup, repeats=args.repeats
    )
    print(format_cost_table(table))
    cached = lut.path if lut.path is not None else "not cached (pass --out DIR)"
    print(f"look-up table: {cached} ({lut.hits} entries reused, {lut.misses} measured)")
    if genotype.cells:
        derived = run.build_derived(genotype)
        found = measure_network(
            derived, x, latency=latency, warmup=args.warmup, repeats=args.repeats
        )
        measured = network_cost_values(found)
        choices = genotype_choices(genotype, table)
        print("\nderived network (the run's genotype), one sample:")
        print("| cost | measured end to end | LUT sum of its ops | + fixed part |")
        print("|---|---|---|---|")
        for kind in table.kinds:
            value = measured[kind]
            shown = f"{value:.4f}" if kind == "latency_ms" else f"{value:,.0f}"
            ops = derived_cost(choices, table, kind)
            fixed = table.fixed.get(kind)
            total = "n/a (not additive)" if fixed is None else f"{ops + fixed:,.4g}"
            print(f"| {kind} | {shown} | {ops:,.4g} | {total} |")
        if found.latency is not None:
            stats = found.latency
            print(
                f"latency: median {stats.median_ms:.4f} ms, IQR {stats.iqr_ms:.4f} ms over "
                f"{stats.repeats} runs after {stats.warmup} warm-up, {stats.device}, "
                f"{stats.threads} thread(s)"
            )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from manifold_nas.run.evaluation import evaluate_run

    result = evaluate_run(args.run_dir)
    print(json.dumps(result, indent=2))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from manifold_nas.run.plotting import plot_run

    paths = plot_run(args.run_dir)
    if not paths:
        raise UserInputError(
            f"nothing to plot in {args.run_dir} yet: no search epoch has finished "
            "(metrics.jsonl) and there is no genotype.json"
        )
    for path in paths:
        print(path)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from manifold_nas.run.evaluation import predict_run

    for path in predict_run(args.run_dir, args.inputs, args.output):
        print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from manifold_nas.run.plotting import plot_run
    from manifold_nas.run.retrain import train_derived

    config_path = args.config or str(DEMO_CONFIG)
    out = Path(args.out) if args.out else _default_out(config_path)
    print(f"demo: search with {config_path} -> {out}")
    config, genotype, summary = _search(config_path, args.overrides, out, False, args.quiet)
    print("derived genotype:")
    print(genotype.describe())
    if summary.get("entropy_ratio") is not None:
        print(
            f"decision: mean edge entropy {100 * summary['entropy_ratio']:.0f}% of its maximum "
            f"(100% = uniform, undecided), top-2 margin {summary['top2_margin']:.3f}"
        )
    trained = train_derived(genotype, config, out / "retrain", quiet=args.quiet)
    plots = plot_run(out)
    primary = next(iter(trained["test"]))
    print(
        f"retrained from scratch: test {primary} = {trained['test'][primary]:.4f}, "
        f"parameters = {trained['parameters']}, search {summary['search_seconds']:.0f} s, "
        f"train {trained['train_seconds']:.0f} s"
    )
    baseline = _demo_baseline(config)
    if baseline is not None and primary in baseline:
        print(f"on the same data, {baseline['name']}: test {primary} = {baseline[primary]:.4f}")
    print("figures: " + ", ".join(str(p) for p in plots))
    return 0


def _demo_baseline(config: Any) -> dict[str, Any] | None:
    """The data set's own classical baseline (``DataBundle.baseline``), if it declares one."""
    from manifold_nas.run.context import build_data

    bundle = build_data(config)
    return None if bundle.baseline is None else dict(bundle.baseline(bundle))


def build_parser() -> argparse.ArgumentParser:
    import argparse

    class Parser(argparse.ArgumentParser):
        """Usage mistakes end in one line and exit status 2, like every other user mistake."""

        def error(self, message: str) -> NoReturn:
            self.exit(2, f"manifold-nas: error: {message} (see {self.prog} --help)\n")

    parser = Parser(prog="manifold-nas", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

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
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "check", help="check a config end to end (keys, data, network) without training"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "cost", help="measure the per-op cost table (params, FLOPs, memory, latency) of a space"
    )
    p.add_argument("target", metavar="RUN_OR_CONFIG")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--out", help="folder of cost_lut.json (default: the run directory)")
    p.add_argument("--repeats", type=int, default=20, help="timed forwards per latency")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing")
    p.add_argument("--no-latency", action="store_true", help="skip timing")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser(
        "evaluate", help="test a run's retrained network (after manifold-nas train RUN)"
    )
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


def _log_to_stderr() -> None:
    """Warnings of the library (resume, resampling, data fixes) as one stderr line each."""
    import logging

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time of the record."""

        manifold_nas_cli = True

        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    logger = logging.getLogger("manifold_nas")
    if not any(getattr(h, "manifold_nas_cli", False) for h in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("manifold-nas: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)


def _say(line: str) -> None:
    """One line on stderr, from rank 0 only under torchrun (every rank would say the same)."""
    if _is_main_process():
        print(line, file=sys.stderr)


def _load_torch() -> None:
    """Import torch, and numpy with it, with SIGINT and SIGTERM held until it is done.

    A Ctrl-C raised inside numpy's C initialisation is lost or surfaces later
    as an ``AttributeError`` of a half-imported numpy (exit status 1); held,
    it ends the command right after the import, in one line and 130. Every
    command imports torch, so this costs nothing.
    """
    with deferred_signals():
        import torch  # noqa: F401


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; every way it ends is one stderr line and an exit status.

    SIGTERM raises from the first line on, and a Ctrl-C or SIGTERM anywhere in
    here (parsing, imports, the command) is one line and exit status 130 or 143.
    """
    previous_sigterm = raise_on_sigterm()
    _RESUME.clear()
    try:
        return _run(argv)
    except KeyboardInterrupt as err:  # Ctrl-C; SIGTERM is its subclass Terminated
        name, status = signal_exit(err)
        _say(_interrupted_message(name))
        return status
    finally:
        # a SIGTERM after the last line (interpreter shutdown, torchrun's clean-up of
        # the other ranks) ends the process the default way, not with an ignored traceback
        restore_sigterm(previous_sigterm)


def _run(argv: Sequence[str] | None) -> int:
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
    if not debug:
        import warnings

        # third-party warnings (torch, MONAI) are noise on the command line;
        # --debug shows them, and the library's own notices go through logging
        warnings.filterwarnings("ignore")
    try:
        _load_torch()
        return int(args.func(args) or 0)
    except UserInputError as err:
        if debug:
            raise
        message = f"manifold-nas: error: {_first_line(err)}"
        if isinstance(err, DiskFullError) and _RESUME:
            # nothing is lost: the previous checkpoint still loads once there is room
            message += f"; resume with: {_RESUME['command']}"
        _say(message)
        return 2
    except Exception as err:
        if debug:
            raise
        # every rank: an internal error may be one rank's own
        print(
            f"manifold-nas: internal error, please report: {type(err).__name__}: "
            f"{_first_line(err)} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
