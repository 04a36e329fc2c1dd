"""``moeplace train-tiny`` on a toy budget: the folder it writes, reproducibility, the corpus check."""

from __future__ import annotations

import json

import pytest

from placer.core.errors import InputError
from placer.tiny.corpus import load_corpus, load_manifest
from tests.conftest import assert_one_line_error

TOY = ["--steps", "3", "--batch-size", "2", "--seq-len", "16", "--layers", "2", "--experts", "4", "--hidden", "16",
       "--expert-ffn", "8", "--eval-every", "3", "--allow-corpus-mismatch"]


def test_train_tiny_writes_a_loadable_model_with_its_card(cli, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "m"
    res = cli("train-tiny", "--out", out, *TOY)
    assert res.code == 0, res.err
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "byte_tokenizer.json", "config.json", "generation_config.json", "model.safetensors",
        "training_log.json"]
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.config.model_type == "qwen3_moe" and model.config.num_experts == 4
    log = json.loads((out / "training_log.json").read_text())
    assert log["config"]["steps"] == 3 and log["history"][-1]["step"] == 3 and log["tokens_seen"] == 3 * 2 * 16
    card = (out / "README.md").read_text()
    assert "moeplace train-tiny" in card and "load-balancing" in card
    # A second run with the same seed gives the same weights; the folder is replaced, not merged.
    first = load_file(out / "model.safetensors")
    assert cli("train-tiny", "--out", out, *TOY).code == 0
    second = load_file(out / "model.safetensors")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_corpus_check_names_the_differing_file(tmp_path):
    manifest = load_manifest()
    f = manifest["files"][0]
    root = tmp_path / "lib"
    (root / f["path"]).parent.mkdir(parents=True)
    (root / f["path"]).write_text("changed\n")
    with pytest.raises(InputError, match=f"{f['path']}: sha256 differs from the manifest's .*--allow-corpus-mismatch"):
        load_corpus({**manifest, "files": [f]}, root=root)
    with pytest.raises(InputError, match="corpus file of the manifest is missing"):
        load_corpus({**manifest, "files": manifest["files"][1:2]}, root=root)


def test_manifest_holds_out_files_by_path_hash():
    from placer.tiny.corpus import is_heldout

    files = load_manifest()["files"]
    held = [f for f in files if f["heldout"]]
    assert 0.05 < len(held) / len(files) < 0.2
    assert all(f["heldout"] == is_heldout(f["path"]) for f in files)


def test_bad_training_options(cli, tmp_path):
    res = cli("train-tiny", "--out", tmp_path / "m", "--top-k", "5", "--experts", "4")
    assert_one_line_error(res, 2, "top_k (5) cannot exceed experts (4)")
    assert not (tmp_path / "m").exists()
