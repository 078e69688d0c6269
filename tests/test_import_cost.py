"""Import cost: the command line's help and ``import manifold_nas`` load no torch,
and an SPD or vision search loads no MONAI.

Every check runs in a fresh interpreter, since this process has long imported
both. Timings are ``benchmarks/imports.py``'s business, not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from support import TINY_SPD, TINY_VISION

from manifold_nas.cli import build_parser


def imported_after(code: str, cwd) -> set[str]:
    """Top-level packages in ``sys.modules`` of a fresh interpreter after running ``code``."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _json, sys as _sys
        print("\\n" + _json.dumps(sorted({m.partition(".")[0] for m in _sys.modules})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def _subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and a.dest == "command"]
    return sorted(sub.choices)


@pytest.mark.parametrize(
    "argv", [["--help"], *([c, "--help"] for c in _subcommands())], ids=" ".join
)
def test_help_imports_no_torch(tmp_path, argv):
    modules = imported_after(
        f"""
        from manifold_nas.cli import main
        try:
            main({argv!r})
        except SystemExit as err:
            assert err.code == 0, err.code
        else:
            raise AssertionError("--help did not exit")
        """,
        tmp_path,
    )
    assert "torch" not in modules


def test_import_manifold_nas_imports_no_torch(tmp_path):
    modules = imported_after("import manifold_nas, manifold_nas.cli", tmp_path)
    assert "torch" not in modules


@pytest.mark.parametrize(
    ("config", "opset"), [(TINY_SPD, "spd"), (TINY_VISION, "darts")], ids=["spd", "vision"]
)
def test_spd_and_vision_networks_import_no_monai(tmp_path, config, opset):
    modules = imported_after(
        f"""
        from manifold_nas import OPSETS, STRATEGIES
        from manifold_nas.config import parse_config
        from manifold_nas.run.context import build_data, build_network

        OPSETS.get({opset!r})
        for name in ("bilevel", "spos", "fox", "evolution"):
            STRATEGIES.get(name)
        config = parse_config({dict(config)!r})
        network, _ = build_network(config, build_data(config))
        assert network.arch_specs
        """,
        tmp_path,
    )
    assert "torch" in modules  # the check ran for real
    assert "monai" not in modules
