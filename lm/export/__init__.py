"""Taking a model elsewhere: ``lab export`` (hf, onnx, safetensors) and ``lab import`` (an HF Llama folder).

* :func:`export_run`: a run directory's checkpoint (or an exported folder)
  into ``out`` as a Hugging Face Llama folder (:mod:`lm.export.hf`), an ONNX
  graph checked with onnxruntime (:mod:`lm.export.onnx`), or lab's own
  safetensors folder (:mod:`lm.export.safetensors_dir`);
* :func:`lm.export.importer.import_hf`: an HF Llama folder into a run directory.

The run is only read. The output folder must be new or empty unless
``force``; a model the format cannot carry is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from lm.errors import ExportError

FORMATS = ("hf", "onnx", "safetensors")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FORMAT_NAMES = {"hf": "Hugging Face (Llama) folder", "onnx": "ONNX graph", "safetensors": "safetensors folder"}


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_run` wrote and from where."""

    out: Path
    files: list[Path]
    checkpoint: Path
    iteration: int | None
    num_params: int


def export_run(run: str | os.PathLike, fmt: str, out: str | os.PathLike, *, checkpoint: str = "best",
               dtype: str = "fp32", force: bool = False) -> ExportResult:
    """Export checkpoint ``checkpoint`` of run directory ``run`` to ``out`` in format ``fmt``."""
    from lm.export.files import prepare_out_dir
    from lm.decode import load

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if fmt == "onnx":
        from lm.export import onnx

        onnx.check_available()
        if dtype != "fp32":
            raise ExportError("--format onnx writes fp32 only (the graph is checked against lab's fp32 logits "
                              "with onnxruntime); leave out --dtype, or use --format hf/safetensors for bf16")
    out = Path(out)
    _check_source(Path(run))
    # Loaded in fp32 on the CPU whatever the run trained in: the file gets the asked dtype.
    loaded = load(run, checkpoint, device="cpu", dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    source_name = f"{run} ({loaded.checkpoint_path.name})"
    if fmt == "hf":
        from lm.export.llama import check_llama

        check_llama(model.cfg, source_name)  # before the folder is made
    if Path(run).resolve() == out.resolve() or Path(run).resolve() in out.resolve().parents:
        raise ExportError(f"--out {out} is inside the run {run}; export somewhere else (the run is never modified)")
    out = prepare_out_dir(out, force, FORMAT_NAMES[fmt])
    source = {"run": str(Path(run).resolve()), "checkpoint": loaded.checkpoint_path.name}
    if fmt == "hf":
        from lm.export.hf import write_hf

        files = write_hf(model, tokenizer, out, DTYPES[dtype], source_name)
    elif fmt == "safetensors":
        from lm.export import safetensors_dir

        files = safetensors_dir.write(model, tokenizer, out, DTYPES[dtype], experiment=loaded.config,
                                      iteration=loaded.iteration, source=source)
    else:
        from lm.export import onnx

        files = onnx.write(model, tokenizer, out, experiment=loaded.config, iteration=loaded.iteration,
                           source=source)
    return ExportResult(out, files, loaded.checkpoint_path, loaded.iteration, model.num_params())


def _check_source(run: Path) -> None:
    """ExportError for a folder that is neither a run directory nor a safetensors export."""
    from lm.export.safetensors_dir import is_export_dir
    from lm.runs import RunDir

    rd = RunDir(run)
    if run.is_dir() and not (rd.exists() or rd.checkpoint_dir.is_dir() or is_export_dir(run)):
        have = sorted(p.name for p in run.iterdir())
        shown = ", ".join(have[:8]) + (" ..." if len(have) > 8 else "") if have else "nothing"
        raise ExportError(f"{run} is not a run directory (no config.toml, status.json or checkpoints/; it holds "
                          f"{shown}) nor a folder written by `lab export --format safetensors`")
