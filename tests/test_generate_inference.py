"""lm.decode.load: a run directory written the way the trainer writes it, back into a
model, a tokenizer and the experiment dict; and every way it can be missing or wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lm.checkpoint_file import atomic_torch_save
from lm.errors import CheckpointError, LabError
from lm.decode import Generator, SamplingParams, load, load_model, resolve_device, resolve_dtype
from lm.model import TransformerLM
from test_generate_support import PATTERN_TEXT, pattern_model, write_run


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_round_trip_gives_the_same_model_tokenizer_and_config(tmp_path):
    src = pattern_model()
    run = write_run(tmp_path, src)
    loaded = load(run, device="cpu")
    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    assert not model.training and model.cfg == src.cfg
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU
    assert _same_weights(model, src)
    assert tok.encode("a€<|endoftext|>") == [97, 0xE2, 0x82, 0xAC, 256]
    assert cfg["name"] == "pattern" and cfg["model"]["context_length"] == src.cfg.context_length
    text = Generator(model, tok).generate("ab", SamplingParams(temperature=0)).text
    assert "ab" + text == PATTERN_TEXT


def test_load_names_the_file_and_step(tmp_path):
    run = write_run(tmp_path, iteration=77)
    loaded = load(run, "latest", device="cpu")
    assert loaded.checkpoint_path == run / "checkpoints" / "latest.pt" and loaded.iteration == 77


def test_bf16_on_cpu_loads_and_generates(tmp_path):
    run = write_run(tmp_path)
    loaded = load(run, device="cpu", dtype="bf16")
    model, tok = loaded.model, loaded.tokenizer
    assert next(model.parameters()).dtype == torch.bfloat16
    r = Generator(model, tok).generate("ab", SamplingParams(temperature=0, max_new_tokens=12))
    assert r.text == PATTERN_TEXT[2:]


def test_checkpoint_by_path_and_a_compiled_models_names(tmp_path):
    src = pattern_model()
    run = write_run(tmp_path, src)
    obj = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    obj["model"] = {f"_orig_mod.{k}": v for k, v in obj["model"].items()}
    atomic_torch_save(obj, tmp_path / "elsewhere.pt")
    model = load(run, checkpoint=tmp_path / "elsewhere.pt", device="cpu").model
    assert _same_weights(model, src)


def test_missing_best_lists_what_exists(tmp_path):
    run = write_run(tmp_path, best=False)
    with pytest.raises(CheckpointError, match="latest.pt"):
        load(run, "best", device="cpu")
    model = load(run, "latest", device="cpu").model
    assert model is not None


def test_missing_run_dir_and_tokenizer_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nope")
    run = write_run(tmp_path, with_tokenizer=False)
    with pytest.raises(CheckpointError, match=r"tokenizer.*does not exist.*checkpoints"):
        load(run, device="cpu")


@pytest.mark.parametrize("mangle, words", [
    (lambda o: "not a dict", "not an lm checkpoint"),
    (lambda o: {**o, "format": "other/9"}, "format 'other/9'"),
    (lambda o: {k: v for k, v in o.items() if k != "config"}, "does not record the model configuration"),
    (lambda o: {**o, "config": {**o["config"], "model": {**o["config"]["model"], "wings": 2}}},
     "does not know: wings"),
    (lambda o: {**o, "config": {**o["config"], "model": {**o["config"]["model"], "num_heads": 5}}},
     "invalid model configuration"),
    (lambda o: {**o, "model": {k: v for k, v in o["model"].items() if "ln_final" not in k}}, "missing tensors"),
])
def test_broken_checkpoints_are_checkpoint_errors(tmp_path, mangle, words):
    run = write_run(tmp_path)
    path = run / "checkpoints" / "best.pt"
    atomic_torch_save(mangle(torch.load(path, weights_only=False)), path)
    with pytest.raises(CheckpointError, match=words):
        load(run, device="cpu")


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    run = write_run(tmp_path)
    path = run / "checkpoints" / "best.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(path, device="cpu")


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    src = pattern_model()
    small = dataclasses.replace(src.cfg, vocab_size=200)
    run = write_run(tmp_path, TransformerLM(small))
    with pytest.raises(CheckpointError, match="do not belong together"):
        load(run, device="cpu")


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(LabError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(LabError, match=r"--device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(LabError, match="CUDA is not available"):
            resolve_device("cuda")


def test_loading_builds_on_meta_without_initialising_and_ties_the_head(tmp_path, monkeypatch):
    src = pattern_model()
    tied = TransformerLM(dataclasses.replace(src.cfg, tie_embeddings=True))
    run = write_run(tmp_path, tied)

    def refuse(self):
        raise AssertionError("init_weights ran while loading a checkpoint")
    monkeypatch.setattr(TransformerLM, "init_weights", refuse)
    model = load(run, device="cpu").model
    assert model.lm_head.weight is model.token_embeddings.weight
    assert all(p.device.type == "cpu" for p in model.parameters())
    rope = model.layers[0].attn.rope
    assert rope.cos.device.type == "cpu"
    torch.testing.assert_close(rope.cos, tied.layers[0].attn.rope.cos)
    assert _same_weights(model, tied)
    with torch.no_grad():
        x = torch.tensor([1, 2, 3])
        torch.testing.assert_close(model(x), tied(x))


def test_init_weights_is_what_the_constructor_does_and_meta_builds_skip_it():
    cfg = pattern_model().cfg
    torch.manual_seed(3)
    a = TransformerLM(cfg)
    b = TransformerLM(cfg, device="meta").to_empty(device="cpu")
    torch.manual_seed(3)
    b.init_weights()
    assert _same_weights(a, b)
    torch.testing.assert_close(a.layers[0].attn.rope.sin, b.layers[0].attn.rope.sin)
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in (a.ln_final, a.layers[0].ln1))
    w = a.layers[0].attn.qkv_proj.weight
    std = (2 / sum(w.shape)) ** 0.5
    assert w.abs().max() <= 3 * std and abs(w.std().item() - std) < 0.2 * std
