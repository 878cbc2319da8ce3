"""lab export / lab import against independent references: transformers' LlamaForCausalLM and
AutoTokenizer (the Hugging Face folder), the tokenizers library, and bitwise round trips.

Models are built directly with random weights (RMSNorm gains random too, so a mixed-up
norm shows), in the quickstart-sized preset ``tiny`` and an odd shape (3 heads, d_model 96,
rope_theta 500, eps 1e-6, tied head) so a wrong q/k permutation, theta, eps or tying fails.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lab.cli import main
from lm.errors import CheckpointError, ExportError, LabError
from lm.export import export_run
from lm.export.hf_tokenizer import read_hf_tokenizer, tokenizer_json
from lm.export.importer import import_hf
from lm.export.llama import check_llama, llama_problems
from lm.export.weights import read_state_dict
from lm.model import ModelConfig
from lm.tokenizer import Tokenizer, train_bpe
from test_generate_support import random_model, write_run

transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Non-ASCII of every width, digits, contractions, runs of spaces/newlines/tabs and special tokens
# next to words and spaces: where a byte-level BPE port usually goes wrong.
MIXED_TEXT = (
    "Héllo wörld! Naïve café, crème brûlée — 3.14159 and 2718 apples.\n"
    "日本語のテキストと中文。 Emoji: 🙂🚀 (family 👨‍👩‍👧) don't won't they're I'll we've\n"
    "   leading spaces\ttabs\t\tand\n\n\nnewlines   <|im_start|>user\nhi<|im_end|><|endoftext|>"
    "after  <|endoftext|>  spaced<|endoftext|><|endoftext|>x ü€ Ελληνικά русский العربية\r\n"
)
TINY = ModelConfig.from_name("tiny")  # the CPU preset: vocab 512, ctx 64, d 64, 2 layers, 4 heads
ODD = ModelConfig(vocab_size=512, context_length=48, d_model=96, num_layers=2, num_heads=3, d_ff=160,
                  rope_theta=500.0, rmsnorm_eps=1e-6, tie_embeddings=True)
SHAPES = {"tiny": TINY, "odd": ODD}


@functools.cache
def _trained_tokenizer_files(root: str) -> Path:
    root = Path(root)
    corpus = root / "corpus.txt"
    corpus.write_text(MIXED_TEXT * 40, encoding="utf-8")
    vocab, merges = train_bpe(corpus, 420, SPECIALS, workers=1)
    return Tokenizer(vocab, merges, SPECIALS).save(root / "tok")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    """A byte-level BPE with real merges (over non-ASCII bytes too) and three special tokens."""
    return Tokenizer.from_dir(_trained_tokenizer_files(str(tmp_path_factory.mktemp("bpe"))))


def _run(tmp_path, cfg, tokenizer, seed=0):
    model = random_model(cfg, seed)
    return model, write_run(tmp_path / "runs", model, tokenizer)


def _hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


# ----------------------------------------------------------------------------- hf: the model

@pytest.mark.parametrize("shape", SHAPES)
def test_transformers_logits_equal_labs(shape, tmp_path, tokenizer):
    cfg = SHAPES[shape]
    model, run = _run(tmp_path, cfg, tokenizer)
    export_run(run, "hf", tmp_path / "hf")
    hf = _hf_model(tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, cfg.vocab_size, (3, cfg.context_length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(ids), hf(ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # the q/k permutation matters: lab's row order in HF's model gives other logits
    sd = model.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(hf.model.layers):
            layer.self_attn.q_proj.weight.copy_(sd[f"layers.{i}.attn.q_proj.weight"])
            layer.self_attn.k_proj.weight.copy_(sd[f"layers.{i}.attn.k_proj.weight"])
        assert (hf(ids).logits - want).abs().max() > 1e-2


def test_config_maps_every_field(tmp_path, tokenizer):
    _, run = _run(tmp_path, ODD, tokenizer)
    export_run(run, "hf", tmp_path / "hf")
    cfg = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size, cfg.max_position_embeddings) == (512, 96, 2, 3, 3, 160, 48)
    assert cfg.rms_norm_eps == 1e-6 and cfg.tie_word_embeddings is True and cfg.hidden_act == "silu"
    assert cfg.rope_parameters["rope_theta"] == 500.0
    eos = tokenizer.special_token_id("<|endoftext|>")
    assert cfg.eos_token_id == eos == cfg.bos_token_id
    st, _ = read_state_dict(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in st and "model.embed_tokens.weight" in st  # tied: stored once


def test_greedy_generate_in_transformers_equals_lab_greedy(tmp_path, tokenizer):
    from lm.decode import Generator, SamplingParams

    model, run = _run(tmp_path, TINY, tokenizer, seed=3)
    export_run(run, "hf", tmp_path / "hf")
    hf = _hf_model(tmp_path / "hf")
    prompt = "Héllo wörld! <|im_start|>user"
    ids = tokenizer.encode(prompt)
    lab = Generator(model, tokenizer, cuda_graphs=False).generate(
        prompt, SamplingParams(temperature=0, max_new_tokens=24))
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=24, pad_token_id=0)
    assert out[0, len(ids):].tolist() == lab.token_ids
    assert len(lab.token_ids) > 3


def test_bf16_export_holds_bf16_weights(tmp_path, tokenizer):
    model, run = _run(tmp_path, TINY, tokenizer)
    export_run(run, "hf", tmp_path / "hf", dtype="bf16")
    st, _ = read_state_dict(tmp_path / "hf" / "model.safetensors")
    assert {t.dtype for t in st.values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"
    assert torch.equal(st["model.embed_tokens.weight"], model.token_embeddings.weight.detach().bfloat16())


@settings(max_examples=25, deadline=None)
@given(heads=st.integers(1, 4), half=st.integers(1, 16), theta=st.floats(10.0, 1e6), seq=st.integers(1, 20))
def test_permuted_rows_turn_labs_rope_into_transformers_rope(heads, half, theta, seq):
    """For q = x W^T: lab's RoPE on lab's rows equals transformers' own apply_rotary_pos_emb on the exported
    rows (the permutation applied to the output features), for any head size, theta and length."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from lm.export.llama import _halves_from_pairs, _pairs_from_halves
    from lm.model import RotaryPositionalEmbedding

    d_head = 2 * half
    d_model = heads * d_head
    g = torch.Generator().manual_seed(heads * 1000 + half)
    w = torch.randn(d_model, d_model, generator=g, dtype=torch.float64)
    x = torch.randn(1, seq, d_model, generator=g, dtype=torch.float64)
    assert torch.equal(_pairs_from_halves(_halves_from_pairs(w, heads), heads), w)
    pos = torch.arange(seq)
    lab_q = (x @ w.T).unflatten(-1, (heads, d_head)).transpose(1, 2)  # (1, T, d) -> (1, H, T, d_head)
    lab_rope = RotaryPositionalEmbedding(theta, d_head, seq)
    want = lab_rope(lab_q.float(), pos)
    hf_q = (x @ _halves_from_pairs(w, heads).T).unflatten(-1, (heads, d_head)).transpose(1, 2)
    cfg = transformers.LlamaConfig(hidden_size=d_model, num_attention_heads=heads, head_dim=d_head,
                                   max_position_embeddings=seq, rope_theta=theta)
    cos, sin = LlamaRotaryEmbedding(cfg)(hf_q.float(), pos[None])
    got, _ = apply_rotary_pos_emb(hf_q.float(), hf_q.float(), cos, sin)
    halves = torch.cat([torch.arange(0, d_head, 2), torch.arange(1, d_head, 2)])  # HF's order of lab's features
    torch.testing.assert_close(got, want[..., halves], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- hf: the tokenizer

def _hf_tokenizer(tokenizer, tmp_path):
    _, run = _run(tmp_path, dataclasses.replace(TINY, vocab_size=tokenizer.vocab_size), tokenizer)
    export_run(run, "hf", tmp_path / "hf")
    return transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")


def test_autotokenizer_ids_equal_labs_on_special_tokens_and_non_ascii(tmp_path, tokenizer):
    hf = _hf_tokenizer(tokenizer, tmp_path)
    for text in [MIXED_TEXT, MIXED_TEXT[::-1], "<|endoftext|>", " ", "", "a" * 300, "\n\n \t x"]:
        ids = tokenizer.encode(text)
        assert hf(text, add_special_tokens=True)["input_ids"] == ids, text
        assert hf.decode(ids) == tokenizer.decode(ids)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == tokenizer.special_token_id("<|endoftext|>")
    assert len(tokenizer.encode(MIXED_TEXT)) < len(MIXED_TEXT.encode())  # the merges are used


def test_autotokenizer_ids_equal_labs_on_tinyshakespeare(tmp_path, shared_data, tokenizer):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(text[:100_000], encoding="utf-8")
    vocab, merges = train_bpe(corpus, 512, ["<|endoftext|>"], workers=1)
    shakespeare = Tokenizer(vocab, merges, ["<|endoftext|>"])
    hf = _hf_tokenizer(shakespeare, tmp_path)
    ids = shakespeare.encode(text)
    assert hf(text)["input_ids"] == ids
    assert len(ids) < 0.6 * len(text)  # the merges are used


@settings(max_examples=60, deadline=None)
@given(pieces=st.lists(st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(SPECIALS + [" ", "  ", "\n"])),
                       max_size=8))
def test_tokenizers_library_agrees_on_random_text(pieces, tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    hf = _hf_fast(tokenizer)
    text = "".join(pieces)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # lone surrogates are not text either library encodes
    assert hf.encode(text).ids == tokenizer.encode(text)
    assert isinstance(hf, HFTokenizer)


_FAST = {}


def _hf_fast(tokenizer):
    from tokenizers import Tokenizer as HFTokenizer

    key = id(tokenizer)
    if key not in _FAST:
        _FAST[key] = HFTokenizer.from_str(json.dumps(tokenizer_json(tokenizer)))
    return _FAST[key]


# ----------------------------------------------------------------------------- import: round trip

@pytest.mark.parametrize("shape", SHAPES)
def test_import_of_export_is_bitwise_the_same_model(shape, tmp_path, tokenizer):
    from lm.decode import load as open_run

    cfg = SHAPES[shape]
    model, run = _run(tmp_path, cfg, tokenizer, seed=5)
    export_run(run, "hf", tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = open_run(tmp_path / "back", device="cpu")
    sa, sb = model.state_dict(), back.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    got = back.model.cfg
    for f in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "ffn_dim", "rope_theta",
              "rmsnorm_eps", "tie_embeddings", "norm", "position", "ffn"):
        assert getattr(got, f) == getattr(cfg, f), f
    assert back.tokenizer.vocab == tokenizer.vocab and back.tokenizer.merges == tokenizer.merges
    assert back.tokenizer.special_tokens == tokenizer.special_tokens
    from lm.runs import RunDir

    rd = RunDir(tmp_path / "back")
    assert rd.status().state == "done" and "imported from" in rd.status().message
    assert rd.config().model.d_model == cfg.d_model  # config.toml loads strictly
    assert (tmp_path / "back" / "checkpoints" / "best.safetensors").is_file()


def test_read_hf_tokenizer_refuses_other_kinds(tmp_path, tokenizer):
    data = tokenizer_json(tokenizer)
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="not a byte-level BPE.*pre_tokenizer"):
        read_hf_tokenizer(tmp_path)


def test_import_errors_name_the_problem(tmp_path, tokenizer):
    _, run = _run(tmp_path, TINY, tokenizer)
    hf = tmp_path / "hf"
    export_run(run, "hf", hf)
    with pytest.raises(ExportError, match="is not a folder"):
        import_hf(tmp_path / "nowhere", tmp_path / "o1")
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 2, "hidden_act": "gelu"}))
    with pytest.raises(ExportError, match=r"hidden_act = 'gelu'.*num_key_value_heads = 2 \(grouped-query"):
        import_hf(hf, tmp_path / "o2")
    (hf / "config.json").write_text(json.dumps(cfg))
    (hf / "model.safetensors").rename(hf / "elsewhere.safetensors")
    (hf / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ExportError, match="no model.safetensors.*pytorch_model.bin: pickled"):
        import_hf(hf, tmp_path / "o3")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# ----------------------------------------------------------------------------- safetensors folder

def test_safetensors_export_loads_wherever_a_run_does(tmp_path, tokenizer, capsys):
    from lm.decode import load as open_run

    model, run = _run(tmp_path, ODD, tokenizer)
    out = tmp_path / "shared"
    assert main(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    loaded = open_run(out, device="cpu")
    sa, sb = model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and loaded.model.cfg == model.cfg
    assert loaded.tokenizer.vocab == tokenizer.vocab and loaded.iteration == 150
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "Héllo", "-t", "0", "-n", "5", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("Héllo")
    with pytest.raises(CheckpointError, match="one set of weights"):
        open_run(out, "step_5", device="cpu")
    Tokenizer({i: bytes([i]) for i in range(256)}, [], SPECIALS).save(out / "tokenizer")  # someone else's
    with pytest.raises(CheckpointError, match="is not the one .*model.safetensors was trained with"):
        open_run(out, device="cpu")


def test_best_checkpoint_is_also_written_as_safetensors(tmp_path):
    from lm.train.run_checkpoints import CheckpointDir

    model = random_model(ODD)
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    obj = {"format": "lm-checkpoint/1", "model": model.state_dict(), "iteration": 7,
           "config": {"model": dataclasses.asdict(ODD)}}
    written = ckpts.save(obj, 7, keep_step_file=True, best=False)
    assert ckpts.best_weights not in written and not ckpts.best_weights.exists()
    written = ckpts.save(obj, 8, keep_step_file=True, best=True)
    assert ckpts.best_weights in written
    state, meta = read_state_dict(ckpts.best_weights)
    want = model.state_dict()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    assert state["lm_head.weight"] is state["token_embeddings.weight"]  # tied: stored once, restored
    assert meta["step"] == "8" and json.loads(meta["model_config"])["d_model"] == 96
    assert not list(ckpts.path.glob(".*.tmp"))


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("switch, value, words", [
    ("norm", "post", "model.norm = 'post' (post-norm"),
    ("norm", "none", "model.norm = 'none' (no normalisation"),
    ("position", "nope", "model.position = 'nope' (no position encoding (NoPE))"),
    ("ffn", "silu", "model.ffn = 'silu' (a plain SiLU MLP"),
    ("residual", False, "model.residual = false (no residual connections)"),
])
def test_every_switch_llama_cannot_express_is_named(switch, value, words, tmp_path, tokenizer):
    if switch not in {f.name for f in dataclasses.fields(ModelConfig)}:
        pytest.skip(f"model.{switch} is not a setting in this checkout yet")
    cfg = dataclasses.replace(TINY, **{switch: value})
    _, run = _run(tmp_path, cfg, tokenizer)
    with pytest.raises(ExportError) as e:
        export_run(run, "hf", tmp_path / "hf")
    msg = str(e.value)
    assert words in msg and "--format safetensors" in msg and "--format onnx" in msg
    assert not (tmp_path / "hf").exists()  # refused before anything is written
    export_run(run, "safetensors", tmp_path / "st")  # lab's own format carries it


def test_an_unknown_new_switch_off_its_default_is_refused():
    @dataclasses.dataclass
    class Future(ModelConfig):
        qk_norm: bool = False

    assert llama_problems(Future()) == []
    assert llama_problems(Future(qk_norm=True)) == [
        "model.qk_norm = true has no Llama equivalent (only its default false does)"]
    ok = dataclasses.replace(TINY, attn_dropout=0.2, resid_dropout=0.1, attention="naive")
    check_llama(ok, "x")  # training-only switches export


def test_missing_run_checkpoint_and_full_output_folder_get_clear_errors(tmp_path, tokenizer, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        export_run(tmp_path / "no-such-run", "hf", tmp_path / "o")
    model, run = _run(tmp_path, TINY, tokenizer)
    with pytest.raises(CheckpointError, match=r"checkpoint 'step_9' does not exist.*latest.pt"):
        export_run(run, "hf", tmp_path / "o", checkpoint="step_9")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["export", str(run), "--format", "hf", "--out", str(full)]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is not empty (it holds notes.txt)" in err and "--force" in err
    assert "Traceback" not in err and sorted(p.name for p in full.iterdir()) == ["notes.txt"]
    assert main(["export", str(run), "--format", "hf", "--out", str(full), "--force"]) == 0
    assert (full / "notes.txt").read_text() == "mine" and (full / "config.json").is_file()
    with pytest.raises(ExportError, match="inside the run"):
        export_run(run, "safetensors", run / "export")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # the run is only read
    with pytest.raises(LabError, match="writes fp32 only"):
        export_run(run, "onnx", tmp_path / "o", dtype="bf16")


# ----------------------------------------------------------------------------- a real run, end to end

def test_a_trained_run_exports_through_the_cli(tmp_path):
    """`lab run` (in process, 10 steps) writes best.safetensors equal to best.pt; `lab export` of the run
    gives transformers the same logits as lab's loader, and the tokenizer the trainer trained."""
    from lm.checkpoint_file import torch_load
    from lm.decode import load as open_run
    from test_train_cli import experiment, run_in_process

    exp = experiment(tmp_path, training={"steps": 10}, eval={"every": 5}, checkpoint={"every": 5})
    run = tmp_path / "runs" / "trained"
    assert run_in_process(exp, run) == 0
    best = torch_load(run / "checkpoints" / "best.pt")["model"]
    weights, meta = read_state_dict(run / "checkpoints" / "best.safetensors")
    assert weights.keys() == best.keys() and all(torch.equal(weights[k], best[k]) for k in best)
    assert meta["step"] == str(torch_load(run / "checkpoints" / "best.pt")["iteration"])
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    loaded = open_run(run, device="cpu")
    hf = _hf_model(tmp_path / "hf")
    text = "The quick fox sat on the mat."
    ids = torch.tensor([loaded.tokenizer.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, loaded.model(ids), atol=1e-4, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"] == ids[0].tolist()


def test_import_of_a_llama_saved_by_transformers_gives_its_logits(tmp_path):
    """An HF folder lab did not write: a random LlamaForCausalLM saved by transformers (in shards) and a
    byte-level BPE trained by the tokenizers library. The imported run's logits and token ids are transformers'."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from lm.decode import load as open_run

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=400, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5,
                                   rope_theta=2000.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim == 1:
                p.normal_(1.0, 0.3)  # norm gains off 1, so a swapped norm shows
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, max_shard_size="200KB")  # shards + model.safetensors.index.json
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    bpe = HFTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([MIXED_TEXT] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(folder / "tokenizer.json"))
    assert main(["import", str(folder), "--out", str(tmp_path / "run")]) == 0
    loaded = open_run(tmp_path / "run", device="cpu")
    ids = torch.randint(0, 400, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), hf(ids).logits, atol=1e-4, rtol=0)
    assert loaded.tokenizer.encode(MIXED_TEXT) == bpe.encode(MIXED_TEXT).ids
    assert loaded.model.cfg.rope_theta == 2000.0


def test_folders_that_are_not_runs_get_a_clear_error(tmp_path, tokenizer):
    from lm.decode import load as open_run

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"junk is not a run directory .*holds photo.jpg"):
        export_run(junk, "hf", tmp_path / "o")
    _, run = _run(tmp_path, TINY, tokenizer)
    export_run(run, "hf", tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"Hugging Face model folder; `lab import .*hf --out RUN_DIR`"):
        open_run(tmp_path / "hf", device="cpu")


def test_onnx_without_its_packages_names_the_extra(tmp_path, tokenizer, monkeypatch):
    from lm.export import onnx

    monkeypatch.setattr(onnx, "missing_packages", lambda: ["onnxscript"])
    _, run = _run(tmp_path, TINY, tokenizer)
    with pytest.raises(ExportError, match=r"needs onnxscript, which is not installed: pip install 'lab-lm\[export\]'"):
        export_run(run, "onnx", tmp_path / "o")
    assert not (tmp_path / "o").exists()
