"""The README's op-set registration example runs as written."""

import json
import re
from pathlib import Path

from manifold_nas.space.opset import OPSETS

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_opset_example_registers_and_searches(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = python_block_after("## Registering an op set")
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
        assert "tiny" in OPSETS.list()
        assert "opset tiny" in capsys.readouterr().out
        assert (tmp_path / "runs" / "tiny" / "genotype.json").is_file()
    finally:
        if "tiny" in OPSETS:
            OPSETS.unregister("tiny")


def test_readme_strategy_example_registers_and_searches(tmp_path, monkeypatch, capsys):
    from manifold_nas.strategies import STRATEGIES

    monkeypatch.chdir(tmp_path)
    code = python_block_after("## Writing a strategy")
    try:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme_strategy"})
        assert "accuracy" in capsys.readouterr().out
        genotype = json.loads((tmp_path / "runs" / "one_draw" / "genotype.json").read_text())
        assert genotype["config"]["strategy"] == {"name": "one_draw", "epochs": 1}
    finally:
        if "one_draw" in STRATEGIES:
            STRATEGIES.unregister("one_draw")


def test_readme_spd_ops_example_runs(capsys):
    exec(
        compile(python_block_after("## `spd_ops`"), "README.md", "exec"), {"__name__": "readme_spd"}
    )
    assert "torch.Size([12, 12])" in capsys.readouterr().out
