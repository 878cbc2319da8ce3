"""``lab calc``: the side-by-side report, JSON, experiment files with --set, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_user_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_calc_preset_side_by_side(capsys):
    assert main(["calc", "--preset", "small", "--device", "rtx4090", "--device", "m4", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "rtx4090" in out and "m4" in out
    assert "rtx4090: fits" in out.replace("\n", " ")
    assert "MFU" in out and "tokens/s" in out
    assert "128,625,408" in out  # the small preset's exact parameter count


def test_calc_json_has_one_estimate_per_device(capsys):
    assert main(["calc", "--preset", "tiny", "--device", "h100", "--device", "cpu", "--json",
                 "--efficiency", "matmul=0.5"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [e["device"]["key"] for e in data["estimates"]] == ["h100", "cpu"]
    est = data["estimates"][0]
    assert est["efficiency"]["matmul"] == 0.5
    # tiny's shapes; the loader sets model.vocab_size from tokenizer.vocab_size (10000) when not given:
    # 2 x 10000 x 64 (embeddings, LM head) + 2 x (4 x 64^2 + 3 x 64 x 192) + 5 x 64
    assert est["params"]["total"] == 1_386_816
    assert est["memory"]["peak"] > 0 and est["time"]["step_s"] > 0 and "fits" in est["verdict"]


def test_calc_experiment_file_with_overrides(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "t"\n[model]\npreset = "tinystories"\n[training]\nbatch_size = 16\n')
    assert main(["calc", str(exp), "--device", "rtx4090", "--set", "training.batch_size=4", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimates"][0]
    assert est["settings"]["batch_size"] == 4
    assert est["settings"]["dtype"] == "bf16"  # training.dtype auto on a CUDA profile


def test_calc_reports_a_config_that_does_not_fit(capsys):
    assert main(["calc", "--preset", "xl", "--device", "rtx4090", "--batch-size", "64"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "rtx4090: does not fit" in out and "over by" in out


def test_calc_unknown_device_lists_known_ones(capsys):
    assert main(["calc", "--preset", "tiny", "--device", "tpu-v9"]) == 2
    err = capsys.readouterr().err
    assert "unknown device 'tpu-v9'" in err and "rtx4090" in err and "Traceback" not in err


def test_calc_bad_efficiency_and_context_are_user_errors(capsys):
    assert main(["calc", "--preset", "tiny", "--device", "cpu", "--efficiency", "speed=2"]) == 2
    assert "--efficiency expects NAME=VALUE" in capsys.readouterr().err
    assert main(["calc", "--preset", "tiny", "--device", "cpu", "--context-length", "4096"]) == 2
    assert "longer than model.context_length" in capsys.readouterr().err
    assert main(["calc", "--preset", "nope", "--device", "cpu"]) == 2
    assert "unknown model preset" in capsys.readouterr().err


def test_calc_list_devices(capsys):
    assert main(["calc", "--list-devices", "--json"]) == 0
    keys = {d["key"] for d in json.loads(capsys.readouterr().out)}
    assert {"m4", "rtx4090", "a100", "h100", "h200", "cpu"} <= keys


def test_command_modules_do_not_import_torch_at_import_time():
    code = ("import sys, lab.commands.calc, lab.commands.bench; "
            "assert 'torch' not in sys.modules and 'lm.calc' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_calc_follows_the_experiments_checkpointing_and_the_flag_overrides_it(tmp_path, capsys):
    """training.activation_checkpointing is what `lab calc EXPERIMENT` sizes; --checkpointing MODE beats it.
    'weights' keeps the activations and drops the blocks' bf16 weight copies from the peak."""
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "t"\n[model]\npreset = "medium"\n[training]\nbatch_size = 4\n'
                   'activation_checkpointing = "weights"\ncompile = "on"\n')

    def peak(*flags):
        assert main(["calc", str(exp), "--device", "h200", "--json", *flags]) == 0
        est = json.loads(capsys.readouterr().out)["estimates"][0]
        return est["settings"], est["memory"]

    s_w, m_w = peak()
    assert s_w["recompute_weight_copies"] is True and s_w["activation_checkpointing"] is False
    s_n, m_n = peak("--checkpointing", "none")
    assert s_n["recompute_weight_copies"] is False
    assert m_w["activations"] == m_n["activations"]
    assert m_n["peak"] - m_w["peak"] > 0.5 * m_n["weight_copies"]  # most copies are gone at the peak
    s_f, m_f = peak("--checkpointing")  # no value: full
    assert s_f["activation_checkpointing"] is True and m_f["peak"] < m_w["peak"]
