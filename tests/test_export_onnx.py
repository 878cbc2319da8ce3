"""lab export --format onnx: the graph runs in onnxruntime with any batch and sequence length and gives
lab's logits, for a Llama-shaped model and for one Llama cannot hold (post-norm, NoPE, SiLU MLP, no residual)."""

from __future__ import annotations

import json

import pytest
import torch

from lab.cli import main
from lm.model import ModelConfig
from test_generate_support import byte_tokenizer, random_model, write_run

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow  # torch's dynamo exporter takes ~15-25 s per model on a 2-core box


@pytest.mark.parametrize("cfg", [
    ModelConfig.from_name("tiny", vocab_size=257),
    ModelConfig(vocab_size=257, context_length=32, d_model=96, num_layers=2, num_heads=3, d_ff=160, norm="post",
                position="nope", ffn="silu", residual=False, tie_embeddings=True),
], ids=["tiny", "odd-post-nope-silu-noresidual"])
def test_onnx_logits_equal_labs_for_any_batch_and_length(cfg, tmp_path):
    model = random_model(cfg)
    run = write_run(tmp_path / "runs", model, byte_tokenizer())
    out = tmp_path / "onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    assert {"model.onnx", "config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["onnxruntime_max_abs_diff"] <= 1e-4
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(7)
    for shape in [(1, 1), (2, 5), (4, cfg.context_length)]:
        ids = torch.randint(0, cfg.vocab_size, shape, generator=g)
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
        with torch.no_grad():
            want = model(ids)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    import onnx

    graph = onnx.load(str(out / "model.onnx")).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert len(dims) == 2 and all(isinstance(d, str) for d in dims), dims  # batch and sequence symbolic
