"""load_run: a run directory written the way the trainer writes it, back into a
model, a tokenizer and the experiment dict; and every way it can be missing or wrong."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lm.checkpoint import atomic_torch_save
from lm.errors import CheckpointError, LabError
from lm.generate import Generator, SamplingParams
from lm.inference import load_model, load_run, open_run, resolve_device, resolve_dtype
from test_generate_support import PATTERN_TEXT, pattern_model, write_run


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_round_trip_gives_the_same_model_tokenizer_and_config(tmp_path):
    src = pattern_model()
    run = write_run(tmp_path, src)
    model, tok, cfg = load_run(run, device="cpu")
    assert not model.training and model.cfg == src.cfg
    assert next(model.parameters()).dtype == torch.float32  # auto on CPU
    assert _same_weights(model, src)
    assert tok.encode("a€<|endoftext|>") == [97, 0xE2, 0x82, 0xAC, 256]
    assert cfg["name"] == "pattern" and cfg["model"]["context_length"] == src.cfg.context_length
    text = Generator(model, tok).generate("ab", SamplingParams(temperature=0)).text
    assert "ab" + text == PATTERN_TEXT


def test_open_run_names_the_file_and_step(tmp_path):
    run = write_run(tmp_path, iteration=77)
    loaded = open_run(run, "latest", device="cpu")
    assert loaded.checkpoint_path == run / "checkpoints" / "latest.pt" and loaded.iteration == 77


def test_bf16_on_cpu_loads_and_generates(tmp_path):
    run = write_run(tmp_path)
    model, tok, _ = load_run(run, device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    r = Generator(model, tok).generate("ab", SamplingParams(temperature=0, max_new_tokens=12))
    assert r.text == PATTERN_TEXT[2:]


def test_checkpoint_by_path_and_a_compiled_models_names(tmp_path):
    src = pattern_model()
    run = write_run(tmp_path, src)
    obj = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    obj["model"] = {f"_orig_mod.{k}": v for k, v in obj["model"].items()}
    atomic_torch_save(obj, tmp_path / "elsewhere.pt")
    model, _, _ = load_run(run, checkpoint=tmp_path / "elsewhere.pt", device="cpu")
    assert _same_weights(model, src)


def test_missing_best_lists_what_exists(tmp_path):
    run = write_run(tmp_path, best=False)
    with pytest.raises(CheckpointError, match="latest.pt"):
        load_run(run, "best", device="cpu")
    model, _, _ = load_run(run, "latest", device="cpu")
    assert model is not None


def test_missing_run_dir_and_tokenizer_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_run(tmp_path / "nope")
    run = write_run(tmp_path, with_tokenizer=False)
    with pytest.raises(CheckpointError, match=r"tokenizer.*does not exist.*checkpoints"):
        load_run(run, device="cpu")


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
        load_run(run, device="cpu")


def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path):
    run = write_run(tmp_path)
    path = run / "checkpoints" / "best.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_model(path, device="cpu")


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    src = pattern_model()
    small = dataclasses.replace(src.cfg, vocab_size=200)
    from lm.model import TransformerLM
    run = write_run(tmp_path, TransformerLM(small))
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_run(run, device="cpu")


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(LabError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(LabError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(LabError, match="CUDA is not available"):
            resolve_device("cuda")
