"""The device install: `pip install --no-deps .` plus deployment/device-requirements.txt in a fresh
virtualenv (no torch, transformers or datasets) trains with `client.run --runtime onnx` and
classifies with `client.predict`. The training artifacts and the merged export are made with
the full install (this interpreter), as a server or a build machine would."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("client", "deployment", "server", "shared", "simulations", "pyproject.toml", "README.md")


def requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-r")]


def test_the_device_requirement_files_are_the_extras():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    device = requirement_lines(REPO / "deployment" / "device-requirements.txt")
    assert device == extras["device"]
    assert device + requirement_lines(REPO / "deployment" / "device-node-requirements.txt") == extras["device-node"]
    assert not any(name.split("=")[0].split(">")[0] in ("torch", "transformers", "datasets") for name in device)


def site_packages_mib(venv: Path) -> float:
    found = next(venv.glob("lib/python*/site-packages"))
    return sum(p.stat().st_size for p in found.rglob("*") if p.is_file()) / 2**20


def run(argv: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env | {"HF_HUB_OFFLINE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return done


@pytest.mark.slow
def test_a_device_install_trains_and_predicts_without_torch(tiny_bert_dir, tmp_path):
    source = tmp_path / "source"
    for name in SOURCES:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--no-deps", source], tmp_path)
    run([python, "-m", "pip", "install", "-q", "-r", source / "deployment" / "device-requirements.txt"], tmp_path)
    missing = run(
        [
            python,
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'transformers', 'datasets') if u.find_spec(m)])",
        ],
        tmp_path,
    )
    assert missing.stdout.strip() == "[]"

    data = tmp_path / "data"
    data.mkdir()
    words = {"pos": "good great fine lovely", "neg": "bad awful poor dull"}
    for split, count in (("train", 24), ("test", 8)):
        rows = [
            f'{{"text": "{words[label].split()[i % 4]} film {i}", "label": "{label}"}}\n'
            for i, label in enumerate(["pos", "neg"] * (count // 2))
        ]
        (data / f"{split}.jsonl").write_text("".join(rows))
    artifacts, adapter, export = tmp_path / "artifacts", tmp_path / "personal.safetensors", tmp_path / "export"
    run([sys.executable, "-m", "client.export", "--training", artifacts, "--model", tiny_bert_dir, "--rank", "4"], REPO)
    trained = run(
        [
            python,
            "-m",
            "client.run",
            "--runtime",
            "onnx",
            "--model-dir",
            artifacts,
            "--data",
            data,
            "--out",
            adapter,
            "--epochs",
            "2",
        ],
        tmp_path,
    )
    assert "held-out accuracy after" in trained.stdout
    run(
        [
            sys.executable,
            "-m",
            "client.export",
            "--adapter",
            adapter,
            "--model",
            tiny_bert_dir,
            "--out",
            export / "model.onnx",
            "--repeats",
            "1",
        ],
        REPO,
    )
    predicted = run([python, "-m", "client.predict", "--model-dir", export, "a good film", "an awful film"], tmp_path)
    assert [line.split("\t")[0] in ("neg", "pos") for line in predicted.stdout.splitlines()] == [True, True]
    print(f"device install: {site_packages_mib(venv):.0f} MiB of site-packages")
