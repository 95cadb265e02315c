"""Which SVD recipe gives bit-identical factors where: the same process again, other torch thread
counts, fresh processes, a Ray worker (and a GPU when there is one), on the packaged MiniLM's 24
target weights at rank 16. Also: the time a device needs to derive the factors against the time
to download them.

Recipes (each a Basis whose fingerprint is compared with the main process's first one):
    exact             float32 torch.linalg.svd (the recipe before issue 11), LAPACK's signs
    float64-threaded  float64 SVD on the process's threads, fixed signs, rounded to float32
    canonical         the default: float64 SVD on one thread, fixed signs, rounded to float32
    canonical-fp16 / canonical-bf16   canonical, rounded to fp16 / bf16 values (basis-dtype)
Writes benchmarks/results/basis_reproducibility.json and .md.

    python -m benchmarks.basis_reproducibility [--processes 3] [--link-mbit 1 5 20]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from server.traffic import wire_bytes
from shared.base_models import DEFAULT_MODEL, load_base_model
from shared.federation.protocol import pack_basis
from shared.loraxs.basis import Basis, canonical_factors, round_factor, svd_factors
from shared.loraxs.config import LoraXSConfig
from shared.loraxs.model import compute_basis, target_module_names

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
RECIPES = ("exact", "float64-threaded", "canonical", "canonical-fp16", "canonical-bf16")
RANK = 16


def recipe_basis(model, recipe: str, device: str = "cpu") -> Basis:
    """The factors of `model`'s target weights by `recipe`."""
    lora = LoraXSConfig(rank=RANK)
    modules = dict(model.named_modules())
    factors = {}
    for name in target_module_names(model, lora):
        weight = modules[name].weight.detach()
        if recipe == "exact":
            factors[name] = svd_factors(weight, LoraXSConfig(rank=RANK, svd_method="exact"))
        elif recipe == "float64-threaded":
            factors[name] = canonical_factors(weight.to(device), RANK, one_thread=False)
        else:
            lora_B, lora_A = canonical_factors(weight.to(device), RANK)
            dtype = {"canonical": "fp32", "canonical-fp16": "fp16", "canonical-bf16": "bf16"}[recipe]
            factors[name] = (round_factor(lora_B, dtype), round_factor(lora_A, dtype))
    return Basis(RANK, factors)


def all_recipes(model, threads: int | None, out_dir: Path | None, tag: str, device: str = "cpu") -> dict:
    """{recipe: fingerprint}; the factors saved as <out_dir>/<tag>-<recipe>.safetensors."""
    if threads:
        torch.set_num_threads(threads)
    found = {}
    for recipe in RECIPES:
        basis = recipe_basis(model, recipe, device)
        found[recipe] = basis.fingerprint
        if out_dir is not None:
            save_file({f"{n}.{k}": t.contiguous() for n, (b, a) in basis.factors.items()
                       for k, t in (("B", b), ("A", a))}, str(out_dir / f"{tag}-{recipe}.safetensors"))
    return found


def child(threads: int, out_dir: Path, tag: str) -> None:
    """A fresh process: load the model, time one derivation, print the fingerprints as JSON."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = load_base_model(DEFAULT_MODEL, "seq-cls")
    loaded = time.perf_counter()
    compute_basis(model, LoraXSConfig(rank=RANK))  # the default recipe, as a ClientApp derives it
    derived = time.perf_counter()
    found = all_recipes(model, threads, out_dir, tag)
    print(json.dumps({"fingerprints": found, "load_seconds": loaded - started, "svd_seconds": derived - loaded}))


def in_fresh_process(threads: int, out_dir: Path, tag: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.basis_reproducibility", "--child", str(threads),
               "--out-dir", str(out_dir), "--tag", tag]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_ray_worker(out_dir: Path, runs: int) -> list[dict]:
    """The recipes inside Ray tasks (a private local Ray, as flower-simulation starts it)."""
    import logging

    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    try:
        @ray.remote(num_cpus=1)
        def task(tag: str) -> dict:
            model = load_base_model(DEFAULT_MODEL, "seq-cls")
            return {"threads": torch.get_num_threads(), "fingerprints": all_recipes(model, None, out_dir, tag)}

        return ray.get([task.remote(f"ray{i}") for i in range(runs)])
    finally:
        ray.shutdown()


def differing_values(out_dir: Path, tag: str, recipe: str) -> int:
    """float32 values that differ from the reference's factors."""
    ref, other = (load_file(str(out_dir / f"{t}-{recipe}.safetensors")) for t in ("ref", tag))
    return int(sum((ref[k] != other[k]).sum().item() for k in ref))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per thread count")
    parser.add_argument("--repeats", type=int, default=2, help="repeats in the main process per thread count")
    parser.add_argument("--ray-tasks", type=int, default=2)
    parser.add_argument("--link-mbit", type=float, nargs="+", default=[1.0, 5.0, 20.0])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, Path(args.out_dir), args.tag)
        return 0

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        model = load_base_model(DEFAULT_MODEL, "seq-cls")
        reference = all_recipes(model, default_threads, out_dir, "ref")
        runs = []  # (context, tag, fingerprints)
        for threads in (1, 2, 4):
            for i in range(args.repeats):
                tag = f"main-t{threads}-{i}"
                runs.append((f"same process, {threads} thread(s)", tag, all_recipes(model, threads, out_dir, tag)))
        torch.set_num_threads(default_threads)
        timings = []
        for threads in (1, 2, 4):
            for i in range(args.processes):
                tag = f"proc-t{threads}-{i}"
                found = in_fresh_process(threads, out_dir, tag)
                timings.append({"threads": threads, **{k: found[k] for k in ("load_seconds", "svd_seconds")}})
                runs.append((f"fresh process, {threads} thread(s)", tag, found["fingerprints"]))
        for i, found in enumerate(in_ray_worker(out_dir, args.ray_tasks)):
            runs.append((f"Ray worker ({found['threads']} thread(s))", f"ray{i}", found["fingerprints"]))
        gpu = torch.cuda.is_available()
        if gpu:
            runs.append(("GPU (cuda, float64 cuSOLVER)", "gpu", all_recipes(model, None, out_dir, "gpu", "cuda")))
        table = {}
        for context, tag, found in runs:
            row = table.setdefault(context, {r: {"runs": 0, "matches": 0, "differing_values": 0} for r in RECIPES})
            for recipe in RECIPES:
                cell = row[recipe]
                cell["runs"] += 1
                cell["matches"] += int(found[recipe] == reference[recipe])
                cell["differing_values"] = max(cell["differing_values"], differing_values(out_dir, tag, recipe))

    svd = statistics.median(t["svd_seconds"] for t in timings)
    load = statistics.median(t["load_seconds"] for t in timings)
    bundle = {dtype: wire_bytes(pack_basis(recipe_basis(model, recipe), dtype))  # as the server ships them
              for dtype, recipe in (("fp32", "canonical"), ("fp16", "canonical-fp16"))}
    links = [{"link_mbit_per_s": mbit,
              **{f"download_seconds_{dtype}": round(size * 8 / (mbit * 1e6), 2) for dtype, size in bundle.items()}}
             for mbit in args.link_mbit]
    result = {
        "meta": {"model": DEFAULT_MODEL, "rank": RANK, "torch": torch.__version__, "python": platform.python_version(),
                 "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "default_threads": default_threads, "lapack": "MKL" if torch.backends.mkl.is_available() else "other",
                 "gpu": torch.cuda.get_device_name(0) if gpu else None,
                 "reference": "the main process, first computation at its default thread count"},
        "reference_fingerprints": reference,
        "match_rates": table,
        "derive_on_device": {"svd_seconds_median": round(svd, 3), "model_load_seconds_median": round(load, 3),
                             "runs": timings},
        "download": {"bundle_bytes": bundle, "links": links},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "basis_reproducibility.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "basis_reproducibility.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = ["# Reproducibility of the derived factors",
             "",
             f"{meta['model']}, rank {meta['rank']}, 24 target weights; torch {meta['torch']} ({meta['lapack']} LAPACK), "
             f"{meta['cpus']} CPUs, GPU: {meta['gpu'] or 'none on this machine (not measured)'}. "
             f"Reference: {meta['reference']}. A cell: runs whose fingerprint equals the reference's / runs "
             "(most float32 values differing in one run).",
             "",
             "| context | " + " | ".join(RECIPES) + " |",
             "|---|" + "---:|" * len(RECIPES)]
    for context, row in result["match_rates"].items():
        cells = [f"{c['matches']}/{c['runs']} ({c['differing_values']})" for c in (row[r] for r in RECIPES)]
        lines.append(f"| {context} | " + " | ".join(cells) + " |")
    derive = result["derive_on_device"]
    lines += ["", "## Derive or download",
              "",
              f"Deriving the factors on this CPU (median of fresh processes): SVD {derive['svd_seconds_median']} s "
              f"(+ {derive['model_load_seconds_median']} s to load the base model, which a training device loads anyway).",
              "",
              f"| link | download fp32 bundle ({result['download']['bundle_bytes']['fp32']:,} B) | "
              f"download fp16 bundle ({result['download']['bundle_bytes']['fp16']:,} B) |",
              "|---:|---:|---:|"]
    for link in result["download"]["links"]:
        lines.append(f"| {link['link_mbit_per_s']:g} Mbit/s | {link['download_seconds_fp32']} s | {link['download_seconds_fp16']} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
