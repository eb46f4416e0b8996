"""`pgolf data fetch` against a local stand-in of the Hugging Face Hub (real huggingface_hub client).

The stand-in answers what `hf_hub_download` asks: HEAD and GET on
`/datasets/{repo}/resolve/{revision}/{path}`, with the headers the client needs
(X-Repo-Commit, ETag, Content-Length; 404 with X-Error-Code: EntryNotFound).
It never sends X-Xet-Hash, so the client stays on plain HTTP.
"""

import dataclasses
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest

from pgolf.cli import main
from pgolf.data.build import build_dataset
from pgolf.data.fetch import REPO_ID, VARIANTS, plan_from_manifest
from pgolf.data.shards import read_shard, write_shard
from pgolf.data.synthetic import synthetic_documents, write_jsonl
from pgolf.data.tokenizer import sha256_file
from pgolf.verify import run_verify

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _shard_bytes(tokens, tmp_path, name):
    path = tmp_path / name
    write_shard(path, np.asarray(tokens))
    return path.read_bytes()


class _Hub:
    """Files by repo path; records requests; `fail_get` holds paths whose GET answers 500."""

    def __init__(self, files, repo_id=REPO_ID):
        self.files = files
        self.requests: list[tuple[str, str]] = []
        self.fail_get: set[str] = set()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, with_body):
                prefix = f"/datasets/{repo_id}/resolve/main/"
                path = unquote(self.path)
                hub.requests.append((self.command, path))
                name = path[len(prefix):] if path.startswith(prefix) else None
                if name is None or name not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if with_body and name in hub.fail_get:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub.files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._answer(False)

            def do_GET(self):
                self._answer(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def gets(self):
        return [path.rsplit("/", 1)[-1] for method, path in self.requests if method == "GET"]


def _serve(files, tmp_path, monkeypatch, repo_id=REPO_ID):
    server = _Hub(files, repo_id)
    server.thread.start()
    # huggingface_hub reads its environment at import time: pass the endpoint explicitly (the command
    # layer reads HF_ENDPOINT) and point the module's cache/offline settings at this test.
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    return server


@pytest.fixture
def hub(tmp_path, tiny_tokenizer_path, monkeypatch):
    rng = np.random.default_rng(0)
    shards = {f"fineweb_val_{0:06d}.bin": rng.integers(0, 384, 300)}
    for index in range(3):
        shards[f"fineweb_train_{index:06d}.bin"] = rng.integers(0, 384, 500 + index)
    source = tmp_path / "source"
    source.mkdir()
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp4096", "stats": {"files_train": 9, "files_val": 1}},
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
             "stats": {"files_train": 3, "files_val": 1, "tokens_val": 300}, "vocab_size": 384},
        ],
        "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab", "vocab_size": 384}],
    }
    files = {"datasets/manifest.json": json.dumps(manifest).encode(),
             "datasets/tokenizers/fineweb_1024_bpe.model": tiny_tokenizer_path.read_bytes(),
             "datasets/tokenizers/fineweb_1024_bpe.vocab": b"<pad>\t0\n"}
    for name, tokens in shards.items():
        files[f"datasets/datasets/fineweb10B_sp1024/{name}"] = _shard_bytes(tokens, source, name)
    server = _serve(files, tmp_path, monkeypatch)
    yield server, shards
    server.server.shutdown()
    server.server.server_close()


def test_fetch_then_resume(hub, tmp_path, capsys):
    server, shards = hub
    dest = tmp_path / "data"
    server.fail_get.add("datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin")
    code = main(["data", "fetch", "--variant", "sp1024", "--train-shards", "2", "--dest", str(dest)])
    error = capsys.readouterr().err
    assert code == 1 and "fineweb_train_000001.bin" in error and "rerun" in error and error.count("\n") == 1
    dataset = dest / "datasets" / "fineweb10B_sp1024"
    assert (dataset / "fineweb_train_000000.bin").is_file()
    assert not (dataset / "fineweb_train_000001.bin").exists()  # no half-written file under the final name

    server.fail_get.clear()
    server.requests.clear()
    assert main(["data", "fetch", "--variant", "sp1024", "--train-shards", "2", "--dest", str(dest)]) == 0
    shard_gets = [name for name in server.gets() if name.endswith(".bin")]
    assert shard_gets == ["fineweb_train_000001.bin"]  # only what was missing
    for name in ("fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"):
        assert np.array_equal(read_shard(dataset / name), shards[name])
    assert not (dataset / "fineweb_train_000002.bin").exists()
    assert (dest / "tokenizers" / "fineweb_1024_bpe.model").is_file()
    assert json.loads((dest / "manifest.json").read_text())["datasets"][1]["name"] == "fineweb10B_sp1024"

    capsys.readouterr()
    assert main(["data", "check", str(dest)]) == 0
    assert "2 of 3 published train shards present" in capsys.readouterr().out


def test_corrupt_local_shard_is_fetched_again(hub, tmp_path):
    server, shards = hub
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--train-shards", "1", "--dest", str(dest)]) == 0
    shard = dest / "datasets" / "fineweb10B_sp1024" / "fineweb_train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-3])
    server.requests.clear()
    assert main(["data", "fetch", "--train-shards", "1", "--dest", str(dest)]) == 0
    assert [name for name in server.gets() if name.endswith(".bin")] == ["fineweb_train_000000.bin"]
    assert np.array_equal(read_shard(shard), shards["fineweb_train_000000.bin"])


def test_asking_too_many_shards_is_one_line(hub, tmp_path, capsys):
    assert main(["data", "fetch", "--train-shards", "5", "--dest", str(tmp_path / "d")]) == 1
    error = capsys.readouterr().err
    assert "only 3 train shards" in error and error.count("\n") == 1


def test_plan_tolerates_sparse_manifests():
    plan = plan_from_manifest({}, "sp1024")
    assert plan.dataset_name == "fineweb10B_sp1024" and plan.val_files == ["fineweb_val_000000.bin"]
    assert plan.train_files[:2] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert plan.tokenizer_files == ["tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"]
    listed = plan_from_manifest({"datasets": [{"name": "sp1024", "val_files": ["a/v0.bin", "a/v1.bin"],
                                               "num_train_shards": 4}]}, "sp1024")
    assert listed.val_files == ["v0.bin", "v1.bin"] and len(listed.train_files) == 4


# ---------------------------------------------------------------- the CaseOps export (frontier.md §1)

CASEOPS_DIR = "fineweb10B_sp8192_lossless_caps_caseops_v1_reserved"
CASEOPS_MODEL = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"


def test_caseops_variant_is_the_published_one():
    variant = VARIANTS["sp8192-caseops"]
    assert variant.repo_id == "romeerp/parameter-golf-caseops-v1" and variant.dataset_name == CASEOPS_DIR
    assert variant.tokenizer_sha256 == "97754754561f20def5edd99765ca0668f880bd94e67316d54aa10ab25f45cc4d"
    plan = plan_from_manifest({}, "sp8192-caseops")
    assert plan.dataset_name == CASEOPS_DIR and plan.tokenizer_files == [f"tokenizers/{CASEOPS_MODEL}"]
    assert plan.val_files == ["fineweb_val_000000.bin"] and plan.val_bytes_files == ["fineweb_val_bytes_000000.bin"]


@pytest.fixture
def caseops_hub(tmp_path, monkeypatch):
    """A CaseOps export built here (real shards, sidecar and tokenizer), laid out as the published repo."""
    documents = synthetic_documents(160, seed=9, rare_probability=0.3)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents)
    built = build_dataset([corpus], tmp_path / "export", vocab_size=400, val_docs=20, tokens_per_shard=6000,
                          is_caseops=True, progress=False, log=lambda line: None)
    stats = json.loads((built.out_dir / "manifest.json").read_text())["datasets"][0]["stats"]
    manifest = {
        "datasets": [{"name": CASEOPS_DIR, "tokenizer_name": "caseops_8192",
                      "stats": {key: stats[key] for key in ("files_train", "files_val", "tokens_val", "docs_val")}}],
        "tokenizers": [{"name": "caseops_8192", "model_path": f"tokenizers/{CASEOPS_MODEL}",
                        "text_transform": "lossless_caps_caseops_v1"}],
    }
    files = {"datasets/manifest.json": json.dumps(manifest).encode(),
             f"datasets/tokenizers/{CASEOPS_MODEL}": built.tokenizer_path.read_bytes()}
    for path in built.out_dir.glob("fineweb_*.bin"):
        files[f"datasets/datasets/{CASEOPS_DIR}/{path.name}"] = path.read_bytes()
    server = _serve(files, tmp_path, monkeypatch, repo_id=VARIANTS["sp8192-caseops"].repo_id)
    monkeypatch.setitem(VARIANTS, "sp8192-caseops", dataclasses.replace(
        VARIANTS["sp8192-caseops"], tokenizer_sha256=sha256_file(built.tokenizer_path)))
    yield server, built.out_dir
    server.server.shutdown()
    server.server.server_close()


def test_fetch_caseops_export_with_its_sidecar(caseops_hub, tmp_path, capsys):
    server, source = caseops_hub
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--variant", "sp8192-caseops", "--train-shards", "1", "--dest", str(dest)]) == 0
    dataset = dest / "datasets" / CASEOPS_DIR
    for name in ("fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_train_000000.bin"):
        assert (dataset / name).read_bytes() == (source / name).read_bytes()
    assert not (dataset / "fineweb_train_000001.bin").exists()
    assert (dest / "tokenizers" / CASEOPS_MODEL).is_file()
    capsys.readouterr()
    assert main(["data", "check", str(dest), "--deep"]) == 0
    out = capsys.readouterr().out
    assert "val byte sidecar:" in out and "check: ok" in out
    checks = {check.name: check for check in run_verify(dest)}
    assert checks["sidecar.shape"].passed and checks["sidecar.document_bytes"].passed
    assert "decoded text" in checks["sidecar.document_bytes"].evidence  # the export ships no corpus


def test_fetch_refuses_a_tokenizer_with_another_sha256(caseops_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(VARIANTS, "sp8192-caseops", dataclasses.replace(VARIANTS["sp8192-caseops"],
                                                                        tokenizer_sha256="0" * 64))
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--variant", "sp8192-caseops", "--train-shards", "0", "--dest", str(dest)]) == 1
    error = capsys.readouterr().err
    assert f"tokenizers/{CASEOPS_MODEL} has sha256" in error and "0000000000000000" in error
    assert error.count("\n") == 1
    assert not (dest / "tokenizers" / CASEOPS_MODEL).exists()


def test_fetch_refuses_a_dest_holding_another_export(hub, tmp_path, capsys):
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--train-shards", "1", "--dest", str(dest)]) == 0
    capsys.readouterr()
    assert main(["data", "fetch", "--variant", "sp8192-caseops", "--train-shards", "0", "--dest", str(dest)]) == 1
    error = capsys.readouterr().err
    assert "already holds fineweb10B_sp1024 from another export" in error and error.count("\n") == 1
