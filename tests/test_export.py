"""The exported train_gpt.py: what goes into the bundle, compaction, the environment, and end to end
(the generated script trains exactly as `pgolf train`, alone and under torchrun with 2 gloo processes)."""

from __future__ import annotations

import ast
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from forge import grow_artifact

from pgolf.cli import main as pgolf_main
from pgolf.config import get_preset, run_config_from_dict, run_config_to_dict, run_config_to_json
from pgolf.errors import PgolfError
from pgolf.packaging.bundle import bundled_modules, requirement_lines, third_party_imports
from pgolf.packaging.entry import DEFAULT_DATA_PATH, closing_lines, config_from_environment, run_id_from_environment
from pgolf.packaging.export import build_script, export_script, exported_code_bytes, resolve_export_config, strip_source
from pgolf.packaging.packcode import pack_source

REFERENCE_CODE_BYTES = 66_133  # the PR-198 sibling run's train_gpt.py (spec §5)

# a few steps of the tiny preset, small enough for 2 shared CPU cores; 2 micro-batches per step so that
# one process (accumulating 2) and two processes (1 each) see the same tokens
TINY_SETTINGS = [
    "vocab_size=384", "iterations=3", "log_every=1", "val_every=0", "autocast_dtype=fp32", "compile=off",
    "warmup_steps=0", "train_seq_len=64", "global_batch_tokens=512", "micro_batch_tokens=256",
    "eval_seq_len=64", "eval_stride=32", "eval_batch_seqs=8", "swa_every=1", "seed=7", "embedding_dtype=fp32",
]


def clean_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RUN_ID",
                                  "DATA_PATH", "TOKENIZER_PATH", "SEED", "ITERATIONS", "MAX_WALLCLOCK_SECONDS")}
    environment.update(extra)
    return environment


def embedded_config(script: Path) -> dict:
    """CONFIG_JSON of an exported script, plain or self-extracting, read without running it."""
    tree = ast.parse(script.read_text())
    call = getattr(tree.body[-1], "value", None)
    if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "exec":  # exec(C.decompress(b85decode(..)))
        import base64
        import importlib

        aliases = {alias.asname or alias.name: alias.name for node in tree.body if isinstance(node, ast.Import)
                   for alias in node.names}
        decompressor = importlib.import_module(aliases[call.args[0].func.value.id])  # lzma or brotli
        packed = call.args[0].args[0].args[0].value
        tree = ast.parse(decompressor.decompress(base64.b85decode(packed)).decode())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "CONFIG_JSON":
            return json.loads(node.value.value)
    raise AssertionError(f"no CONFIG_JSON in {script}")


# ---------------------------------------------------------------- what the bundle holds


@pytest.mark.slow
def test_bundle_holds_every_module_the_training_path_imports():
    probe = ("import sys, pgolf.train, pgolf.packaging.entry; "
             "print(sorted(m for m in sys.modules if m == 'pgolf' or m.startswith('pgolf.')))")
    loaded = ast.literal_eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                             check=True).stdout.strip())
    bundle = bundled_modules()
    assert set(loaded) <= set(bundle), set(loaded) - set(bundle)
    assert "pgolf.train" in loaded and "pgolf.packaging.entry" in bundle
    # command-line plumbing, plotting, downloading, exporting and the optional CPU kernels are not part of
    # a training run
    assert not {"pgolf.cli", "pgolf.plot", "pgolf.packaging.export", "pgolf.data.fetch", "pgolf.kernels",
                "pgolf.kernels.cpu_attention"} & set(bundle)




@pytest.mark.slow
@pytest.mark.parametrize("code_packing", ["plain", "lzma", "minify-brotli"])
def test_exported_script_serves_pgolf_only_from_itself(tmp_path, code_packing):
    script = export_script("tiny", tmp_path, overrides=[f"code_packing={code_packing}"])
    probe = textwrap.dedent(f"""
        import json, runpy, sys
        runpy.run_path({str(script)!r}, run_name="bundle")
        import pgolf, pgolf.train, pgolf.packaging.entry
        try:
            import pgolf.plot
            plot = "imported"
        except ModuleNotFoundError as error:
            plot = error.name
        files = {{name: module.__file__ for name, module in sys.modules.items()
                 if name == "pgolf" or name.startswith("pgolf.")}}
        print(json.dumps({{"files": files, "version": pgolf.__version__, "plot": plot}}))
    """)
    # the installed package is importable in this interpreter: the bundle must still win
    report = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                       cwd=tmp_path).stdout.strip().splitlines()[-1])
    assert set(report["files"].values()) == {str(script)}
    assert set(report["files"]) <= set(bundled_modules())
    assert report["plot"] == "pgolf.plot"
    import pgolf

    assert report["version"] == pgolf.__version__


def test_export_writes_requirements_and_config(tmp_path):
    script = export_script("tiny", tmp_path, overrides=["iterations=5"])
    requirements = (tmp_path / "requirements.txt").read_text().split()
    assert {"numpy", "sentencepiece", "zstandard"} <= set(requirements)
    assert not {"torch", "pgolf", "matplotlib"} & set(requirements)
    config = run_config_from_dict(embedded_config(script))
    assert config == replace(get_preset("tiny"), iterations=5)
    assert len(script.read_text().splitlines()) == 2  # the presets count the packed script
    plain = export_script("tiny", tmp_path / "plain", overrides=["iterations=5", "code_packing=plain"])
    assert embedded_config(plain) == embedded_config(script) | {"code_packing": "plain"}


def test_export_from_run_folder_drops_local_paths(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = replace(get_preset("baseline"), data_dir="/home/me/data", tokenizer_path="/home/me/tok.model", seed=3)
    (run_dir / "config.json").write_text(run_config_to_json(config))
    exported = resolve_export_config(run_dir)
    assert exported == replace(config, data_dir="", tokenizer_path="")
    with pytest.raises(PgolfError, match="neither a run folder nor a preset"):
        resolve_export_config(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PgolfError, match="no config.json"):
        resolve_export_config(tmp_path / "empty")


def test_export_command_compact_is_smaller_and_under_the_reference(tmp_path, capsys):
    assert pgolf_main(["export", "pr198", "--out", str(tmp_path / "plain"), "--plain"]) == 0
    assert pgolf_main(["export", "pr198", "--out", str(tmp_path / "compact"), "--compact"]) == 0
    plain = (tmp_path / "plain" / "train_gpt.py").stat().st_size
    compact = (tmp_path / "compact" / "train_gpt.py").stat().st_size
    printed = capsys.readouterr().out
    assert f"({plain} bytes of code)" in printed and f"({compact} bytes of code)" in printed
    assert compact < plain / 2
    # one definition of code bytes: what `pgolf train` reports for a config is the exported script's size
    assert exported_code_bytes(get_preset("pr198")) == compact  # the presets count the packed script
    assert exported_code_bytes(replace(get_preset("pr198"), code_packing="plain")) == plain
    assert compact < REFERENCE_CODE_BYTES
    assert len((tmp_path / "compact" / "train_gpt.py").read_text().splitlines()) == 2


# ---------------------------------------------------------------- compaction


def test_strip_source_removes_docstrings_and_comments_but_not_behaviour():
    source = textwrap.dedent('''
        """Module docstring."""
        from dataclasses import dataclass

        TEXT = """a string that is data, not a docstring"""  # a comment


        class Only:
            """Just a docstring."""


        @dataclass
        class Point:
            """A point."""
            x: int  # the x
            y: int = 2

            def total(self) -> int:
                """Sum."""
                return self.x + self.y  # why


        def empty():
            """Nothing else."""
    ''')
    stripped = strip_source(source)
    assert "#" not in stripped and "docstring" not in stripped.replace("not a docstring", "")
    tree = ast.parse(stripped)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            assert ast.get_docstring(node) is None
    namespace: dict = {"__name__": "stripped_example"}
    exec(compile(stripped, "<stripped>", "exec", dont_inherit=True), namespace)
    assert namespace["Point"](x=1).total() == 3
    assert namespace["TEXT"] == "a string that is data, not a docstring"
    assert namespace["empty"]() is None and namespace["Only"]() is not None


def test_self_extracting_script_runs_in_the_scripts_globals():
    inner = "RESULT = (__name__, __file__, sum(range(10)))\n" + "# padding that compresses well\n" * 200
    wrapper = pack_source(inner, "lzma", minify=False)  # the "lzma" code packing
    assert len(wrapper) < len(inner)
    namespace = {"__name__": "__main__", "__file__": "/records/train_gpt.py"}
    exec(compile(wrapper, "train_gpt.py", "exec", dont_inherit=True), namespace)
    assert namespace["RESULT"] == ("__main__", "/records/train_gpt.py", 45)


def test_third_party_imports_skip_stdlib_torch_and_optional_imports():
    sources = [
        "import os, json\nimport numpy as np\nfrom torch import nn\nfrom . import sibling\n",
        "try:\n    import flash_attn_interface\nexcept ImportError:\n    pass\n"
        "def lazy():\n    import zstandard\n    from sentencepiece import SentencePieceProcessor\n",
        "from __future__ import annotations\nimport pgolf.config\n",
    ]
    assert third_party_imports(sources) == ["numpy", "sentencepiece", "zstandard"]
    assert requirement_lines(["zstandard", "numpy"]) == ["numpy", "zstandard"]


# ---------------------------------------------------------------- the environment


def test_config_from_environment_maps_the_challenge_variables():
    config_json = json.dumps(run_config_to_dict(get_preset("pr198")))
    default = config_from_environment(config_json, {})
    assert default.data_dir == DEFAULT_DATA_PATH and default.tokenizer_path == ""
    assert default == replace(get_preset("pr198"), data_dir=DEFAULT_DATA_PATH)
    changed = config_from_environment(config_json, {
        "DATA_PATH": "/data/sp1024", "TOKENIZER_PATH": "/data/tok.model", "SEED": "42", "ITERATIONS": "9000",
        "MAX_WALLCLOCK_SECONDS": "0", "VAL_LOSS_EVERY": "0", "TRAIN_LOG_EVERY": "5", "RUN_ID": "ignored here",
        "UNRELATED": "x",
    })
    assert (changed.data_dir, changed.tokenizer_path, changed.seed, changed.iterations) == \
        ("/data/sp1024", "/data/tok.model", 42, 9000)
    assert (changed.max_wallclock_seconds, changed.val_every, changed.log_every) == (0.0, 0, 5)
    with pytest.raises(PgolfError, match="ITERATIONS='many'"):
        config_from_environment(config_json, {"ITERATIONS": "many"})


def test_run_id_is_shared_by_all_ranks_and_must_be_a_name():
    config = get_preset("tiny")
    assert run_id_from_environment(config, {}) == "tiny_seed1337"
    assert run_id_from_environment(config, {"RUN_ID": "try3"}) == "try3"
    with pytest.raises(PgolfError, match="plain folder name"):
        run_id_from_environment(config, {"RUN_ID": "../elsewhere"})


def test_closing_lines_report_bytes_and_both_exact_scores():
    result = {"quant_scheme": "pr198", "bytes_model": 15_000_000, "bytes_code": 30_000, "bytes_total": 15_030_000,
              "bytes_budget": 16_000_000, "val_loss": 1.9, "val_bpb": 1.13, "val_loss_roundtrip_plain": 1.95,
              "val_bpb_roundtrip_plain": 1.15, "eval_stride": 64, "eval_seq_len": 2048}
    lines = closing_lines(result)
    assert "Code size: 30000 bytes" in lines
    assert "final_sliding_window_exact val_loss:1.90000000 val_bpb:1.13000000 stride:64" in lines
    assert "final_roundtrip_plain_exact val_loss:1.95000000 val_bpb:1.15000000" in lines
    assert not any("sliding" in line for line in closing_lines({**result, "eval_stride": 2048}))


# ---------------------------------------------------------------- end to end


def metrics_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(record["step"], record["train_loss"]) for record in records if "train_loss" in record]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_dataset_dir):
    """`pgolf train` with TINY_SETTINGS on the tiny dataset (one process)."""
    run_dir = tmp_path_factory.mktemp("pgolf_train") / "run"
    arguments = ["train", "--preset", "tiny", "--data", str(tiny_dataset_dir), "--out", str(run_dir), "--quiet"]
    for setting in TINY_SETTINGS:
        arguments += ["--set", setting]
    assert pgolf_main(arguments) == 0
    return run_dir


def run_exported(tmp_path: Path, code_packing: str, launcher: list[str], dataset: Path, tokenizer: Path,
                 run_id: str, **extra_environment: str) -> tuple[Path, str]:
    """Export (with a different iteration count and seed, which the environment then restores), run
    the script from its own folder, return (script, stdout)."""
    out_dir = tmp_path / code_packing
    settings = [s for s in TINY_SETTINGS if not s.startswith(("iterations=", "seed="))] + ["iterations=50"]
    script = export_script("tiny", out_dir, overrides=settings + [f"code_packing={code_packing}"])
    environment = clean_environment(DATA_PATH=str(dataset), TOKENIZER_PATH=str(tokenizer), SEED="7",
                                    ITERATIONS="3", RUN_ID=run_id, **extra_environment)
    completed = subprocess.run([*launcher, script.name], cwd=out_dir, env=environment, capture_output=True,
                               text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    return script, completed.stdout


def assert_same_run(reference: Path, script: Path, stdout: str, run_id: str, relative_tolerance: float) -> None:
    run_dir = script.parent / "logs" / run_id
    expected, actual = metrics_losses(reference), metrics_losses(run_dir)
    assert [step for step, _ in actual] == [step for step, _ in expected] == [1, 2, 3]
    for (_, want), (_, got) in zip(expected, actual):
        assert math.isclose(got, want, rel_tol=relative_tolerance, abs_tol=0), (expected, actual)
    reference_result = json.loads((reference / "result.json").read_text())
    result = json.loads((run_dir / "result.json").read_text())
    for key in ("val_bpb", "val_bpb_roundtrip_plain", "val_bpb_prequant"):
        assert math.isclose(result[key], reference_result[key], rel_tol=relative_tolerance), key
    assert result["val_tokens_scored"] == reference_result["val_tokens_scored"]
    code_bytes = script.stat().st_size
    assert result["bytes_code"] == code_bytes
    assert f"Code size: {code_bytes} bytes" in stdout
    assert f"final_sliding_window_exact val_loss:{result['val_loss']:.8f} val_bpb:{result['val_bpb']:.8f}" in stdout
    assert "step:3/3 train_loss:" in stdout
    assert (script.parent / "model.pgolf").read_bytes() == (run_dir / "model.pgolf").read_bytes()


@pytest.mark.slow
def test_exported_script_trains_exactly_like_pgolf_train(tmp_path, trained_run, tiny_dataset_dir,
                                                         tiny_tokenizer_path):
    script, stdout = run_exported(tmp_path, "plain", [sys.executable], tiny_dataset_dir, tiny_tokenizer_path,
                                  "single")
    # same process layout, code and seed; only the thread count may differ from pytest's process
    assert_same_run(trained_run, script, stdout, "single", relative_tolerance=1e-6)


@pytest.mark.slow
def test_compact_script_under_torchrun_matches_pgolf_train(tmp_path, trained_run, tiny_dataset_dir,
                                                           tiny_tokenizer_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    # the frontier's packing (minified, brotli, base85): the packed script trains as pgolf train does
    script, stdout = run_exported(tmp_path, "minify-brotli", [*launcher, "--standalone", "--nproc_per_node=2"],
                                  tiny_dataset_dir, tiny_tokenizer_path, "gloo2", OMP_NUM_THREADS="1")
    assert "world_size:2" in stdout
    # 2 ranks x 1 micro-batch instead of 1 x 2: same tokens, gradients summed in another order
    assert_same_run(trained_run, script, stdout, "gloo2", relative_tolerance=1e-5)


@pytest.mark.slow
def test_submit_ships_the_exported_script_and_refuses_over_budget(tmp_path, trained_run, capsys):
    records = tmp_path / "records"
    assert pgolf_main(["submit", str(trained_run), "--name", "tiny test", "--author", "A", "--github-id", "a",
                       "--out", str(records)]) == 0
    submission = json.loads((records / "submission.json").read_text())
    script = records / "train_gpt.py"
    # the run counted the code its config exports (plain here), and submit ships exactly that file
    trained = json.loads((trained_run / "result.json").read_text())
    assert submission["bytes_code"] == script.stat().st_size == trained["bytes_code"]
    assert submission["bytes_total"] == submission["bytes_model"] + submission["bytes_code"]
    assert (records / "requirements.txt").is_file() and list(records.glob("train_seed*.log"))
    assert embedded_config(script)["data_dir"] == ""

    heavy = tmp_path / "heavy_run"
    shutil.copytree(trained_run, heavy)
    # one byte over with the exported code, as a run of the exported script would record it
    grow_artifact(heavy, 16_000_000 - script.stat().st_size + 1, bytes_code=script.stat().st_size)
    capsys.readouterr()
    assert pgolf_main(["submit", str(heavy), "--name", "heavy", "--author", "A", "--github-id", "a",
                       "--out", str(tmp_path / "heavy_records")]) == 1
    assert "bytes_total 16,000,001 > 16,000,000" in capsys.readouterr().err
    assert not (tmp_path / "heavy_records" / "submission.json").exists()


def test_a_script_bundles_only_the_features_its_config_uses():
    """pr198's script leaves out TTT, the tilt, GPTQ and the per-group layout (their code bytes would
    count against the budget for nothing); frontier's carries every one but the tilt (#1855 has none),
    which its TTT imports only when the tilt is on."""
    from pgolf.packaging.bundle import FEATURE_MODULES, unused_feature_modules

    every_feature = {module for modules in FEATURE_MODULES.values() for module in modules}
    assert unused_feature_modules(get_preset("pr198")) == every_feature
    assert unused_feature_modules(get_preset("frontier")) == {"pgolf.tilt"}
    assert unused_feature_modules(replace(get_preset("frontier"), eval_tilt=True)) == frozenset()
    pr198_text, _ = build_script(replace(get_preset("pr198"), code_packing="plain"))
    assert "'pgolf.ttt'" not in pr198_text and "'pgolf.gptq'" not in pr198_text and "'pgolf.model'" in pr198_text
    frontier_text, _ = build_script(replace(get_preset("frontier"), code_packing="plain"))
    assert "'pgolf.ttt'" in frontier_text and "'pgolf.pergroup'" in frontier_text
