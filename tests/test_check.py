"""`pgolf data check`: passes on a built dataset, names the file on any problem."""

import json
import shutil

from pgolf.cli import main
from pgolf.data.check import check_dataset


def _copy(tiny_dataset_dir, tmp_path):
    return shutil.copytree(tiny_dataset_dir, tmp_path / "copy")


def test_passes_on_built_dataset(tiny_dataset_dir, capsys):
    assert main(["data", "check", str(tiny_dataset_dir), "--deep"]) == 0
    out = capsys.readouterr().out
    assert "check: ok" in out and "val: 2 shard(s)" in out
    summary = check_dataset(tiny_dataset_dir)
    assert summary.num_train_files > 1 and summary.vocab_size == 384


def test_fails_naming_the_cut_shard(tiny_dataset_dir, tmp_path, capsys):
    copy = _copy(tiny_dataset_dir, tmp_path)
    victim = sorted(copy.glob("fineweb_train_*.bin"))[-1]
    victim.write_bytes(victim.read_bytes()[:-1])
    code = main(["data", "check", str(copy)])
    error = capsys.readouterr().err
    assert code == 1 and str(victim) in error and "size mismatch" in error and error.count("\n") == 1


def test_fails_on_manifest_count_mismatch(tiny_dataset_dir, tmp_path, capsys):
    copy = _copy(tiny_dataset_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["datasets"][0]["stats"]["tokens_val"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "check", str(copy)]) == 1
    assert "tokens_val" in capsys.readouterr().err


def test_fails_on_vocab_mismatch_and_missing_shard(tiny_dataset_dir, tmp_path, capsys):
    copy = _copy(tiny_dataset_dir, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["datasets"][0]["vocab_size"] = 1024
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "check", str(copy)]) == 1
    assert "vocab_size 1024" in capsys.readouterr().err
    shutil.rmtree(copy)
    copy = _copy(tiny_dataset_dir, tmp_path)
    sorted(copy.glob("fineweb_train_*.bin"))[-1].unlink()
    assert main(["data", "check", str(copy)]) == 1
    assert "files_train = 14" in capsys.readouterr().err


def test_fails_on_missing_folder(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing")]) == 1
    assert "pgolf data fetch" in capsys.readouterr().err
