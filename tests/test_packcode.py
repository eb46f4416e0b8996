"""Packed code: a packed module runs and behaves the same as its source."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.packaging.packcode import minify_source, pack_source

pytest.importorskip("python_minifier")
pytest.importorskip("brotli")

SAMPLE = '''"""A module docstring that packing drops."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Point:
    """A docstring."""
    x: int
    y: int = 2

    def norm1(self) -> int:
        assert self.x >= 0, "asserts are removed"
        return abs(self.x) + abs(self.y)


def table(limit: int) -> list[int]:
    long_name_that_stays = [Point(value).norm1() for value in range(limit)]
    return long_name_that_stays


if __name__ == "__main__":
    print(table(5), Point(3).norm1())
'''


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.mark.parametrize("packer", ["brotli", "lzma"])
def test_packed_module_runs_and_behaves_the_same(tmp_path, packer):
    packed = pack_source(SAMPLE, packer)
    assert packed.count("\n") == 2 and packed.startswith(f"import {packer} as C,base64 as B\nexec(")
    (tmp_path / "original.py").write_text(SAMPLE)
    (tmp_path / "packed.py").write_text(packed)
    original, module = load_module(tmp_path / "original.py", "original"), load_module(tmp_path / "packed.py", "packed")
    assert module.table(7) == original.table(7)
    assert module.Point(-3).norm1() == 5  # the assert was removed by the minifier
    with pytest.raises(AssertionError):
        original.Point(-3).norm1()
    runs = [subprocess.run([sys.executable, str(tmp_path / name)], capture_output=True, text=True, check=True).stdout
            for name in ("original.py", "packed.py")]
    assert runs[0] == runs[1] == "[2, 3, 4, 5, 6] 5\n"


def test_minifier_keeps_names_and_drops_docstrings():
    minified = minify_source(SAMPLE)
    assert "long_name_that_stays" in minified and "def table(limit" in minified
    assert "docstring" not in minified and "assert" not in minified


CUSTOM_OP = '''
import torch


@torch.library.custom_op("pgolf_test::packcode_twice", mutates_args=())
def twice(x: torch.Tensor, scale: float) -> torch.Tensor:
    """torch reads the op's schema from these annotations."""
    return x * (2 * scale)


result: float = twice(torch.ones(3), 1.5).sum().item()
'''


def test_a_module_defining_custom_ops_keeps_its_signatures_through_packing(tmp_path):
    minified = minify_source(CUSTOM_OP)
    assert "x:torch.Tensor" in minified.replace(" ", "") and "docstring" not in minified
    (tmp_path / "ops_packed.py").write_text(pack_source(CUSTOM_OP))
    assert load_module(tmp_path / "ops_packed.py", "ops_packed").result == 9.0


def test_packed_quant_module_quantises_identically(tmp_path):
    from pgolf import quant

    source = Path(quant.__file__).read_text()
    packed = pack_source(source)
    assert len(packed) < len(source) / 3
    (tmp_path / "quant_packed.py").write_text(packed)
    module = load_module(tmp_path / "quant_packed.py", "quant_packed")
    weight = torch.randn(300, 300, generator=torch.Generator().manual_seed(0)) * 0.05
    state = {"blocks.0.mlp.fc.weight": weight, "tok_emb.weight": weight * 3}
    ours, theirs = quant.quantize_state_dict(state, "pr198"), module.quantize_state_dict(state, "pr198")
    for name in state:
        for part, tensor in ours.tensors[name].parts.items():
            assert torch.equal(tensor, theirs.tensors[name].parts[part]), (name, part)
