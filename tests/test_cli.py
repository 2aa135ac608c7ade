"""The command line: help, subcommands, clear errors with exit code 2, and a real (fast) reproduce run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cl_utils.__main__ import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cl_utils", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    r = run("--help")
    assert r.returncode == 0
    for sub in ("info", "data", "reproduce"):
        assert sub in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["reproduce", "no-such-experiment"], "invalid choice"),
        (["reproduce", "mnist-mlp", "--seeds", "0"], "positive integer"),
        (["reproduce", "mnist-mlp", "--seeds", "two"], "positive integer"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_device_exits_2(capsys):
    assert main(["reproduce", "mnist-mlp", "--fast", "--device", "warp-drive"]) == 2
    assert "bad device" in capsys.readouterr().err


def test_info_and_data(capsys):
    assert main(["info"]) == 0
    assert "MNIST:" in capsys.readouterr().out
    assert main(["data", "--no-download"]) == 0
    assert "md5 sums OK" in capsys.readouterr().out


def test_data_reports_missing_files(tmp_path, monkeypatch, capsys):
    from cl_utils import data as D

    monkeypatch.setattr(D, "_repo_root", lambda: tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CL_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "_MEMORY", {})
    assert main(["data", "--root", str(tmp_path), "--no-download"]) == 1
    assert "MNIST not found" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_mnist_mlp_fast_json(capsys):
    assert main(["reproduce", "mnist-mlp", "--fast", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "mnist-mlp" and out["fast"] is True and len(out["runs"]) == 1
    assert out["mean"] >= 97.0
