"""benchmarks.all: RESULTS.md assembled from fake result files; a failing benchmark is reported
with its reason and never hides the others; every registered module exists and follows the
convention. (No heavy benchmark runs here.)"""

import importlib
import importlib.util
import inspect
import json
from pathlib import Path

import pytest

from benchmarks.all import REGISTRY, Benchmark, main, run_benchmark
from benchmarks.results_page import STATUS_FILE, build_page


def fake_results(folder):
    bytes_doc = {
        "command": "python -m benchmarks.bytes_per_round",
        "machine": {"date": "2026-01-02T03:04:05Z"},
        "goals": [
            {"goal": "LoRA-XS 25x below LoRA r=8", "measured": "27.7x", "met": True, "limit": ""},
            {"goal": "fp16 even smaller", "measured": "12.0x", "met": False, "limit": "the head dominates"},
        ],
    }
    (folder / "bytes_per_round.json").write_text(json.dumps(bytes_doc))
    (folder / "bytes_per_round.md").write_text("# Bytes\n\n| method | up |\n|---|---:|\n| LoRA-XS | 30,532 |\n")
    pareto_doc = {"command": "python -m benchmarks.pareto", "machine": {"date": "2026-01-01T00:00:00Z"}, "goals": []}
    (folder / "pareto.json").write_text(json.dumps(pareto_doc))
    (folder / "pareto.md").write_text("| run | acc |\n|---|---|\n| r=16 | 0.78 |\n\n![plot](pareto.png)\n")
    return {
        "command": "python -m benchmarks.all --quick",
        "started": "2026-01-02T03:00:00Z",
        "finished": "2026-01-02T03:05:00Z",
        "machine": {
            "cores": 2,
            "platform": "Linux",
            "torch": "2",
            "load_average_before": 1.5,
            "load_average_after": 2.5,
        },
        "statuses": {
            "bytes_per_round": {"state": "ran", "module": "benchmarks.bytes_per_round", "seconds": 31.0},
            "pareto": {
                "state": "failed",
                "module": "benchmarks.pareto",
                "seconds": 12.0,
                "error": "exit 1: LoraXSError: training diverged",
            },
        },
    }


def test_page_from_fake_results(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    run = fake_results(results)
    page = build_page(REGISTRY, results, tmp_path / "RESULTS.md", run)

    assert "`python -m benchmarks.all --quick`" in page
    assert "2 cores" in page and "1.5 before" in page and "2.5 after" in page
    assert "| LoRA-XS | 30,532 |" in page  # the benchmark's own table, included
    assert "| fp16 even smaller | 12.0x | **no** | the head dominates |" in page  # a missed goal and its limit
    assert "| LoRA-XS 25x below LoRA r=8 | 27.7x | yes |" in page
    assert "**failed** after 12 s: `exit 1: LoraXSError: training diverged`" in page
    assert "| r=16 | 0.78 |" in page  # a failed benchmark still shows its older results, marked so
    assert "(the results below are older)" in page
    assert "not run by `benchmarks.all` yet" in page  # personalization: no status, no results
    assert "![plot](results/pareto.png)" in page  # the plot linked from where the page lives
    assert "### Bytes" in page  # included headings sit below the page's sections
    for bench in REGISTRY:  # every registered benchmark has its section, results or not
        assert f": {bench.name}\n" in page


def test_the_hand_written_part_comes_last_with_its_links_from_the_page(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    run = fake_results(results)
    (results / "by_hand.md").write_text(
        "# Measured by hand\n\n## A study\n\nSee [its table](../studies/results/x.md), "
        "[a run](run/report.md), [docs](../../docs/SCALE.md) and [above](#goals).\n"
    )
    page = build_page(REGISTRY, results, tmp_path / "benchmarks" / "RESULTS.md", run)
    assert page.index("## Measured by hand\n") > page.index(f": {REGISTRY[-1].name}\n")  # its title: one section
    assert "### A study" in page
    assert "[its table](studies/results/x.md)" in page and "[a run](results/run/report.md)" in page
    assert "[docs](../docs/SCALE.md)" in page and "[above](#goals)" in page


def test_a_failing_benchmark_is_reported(tmp_path):
    failing = Benchmark("broken", "9 Broken", "none", "json.tool", quick=(str(tmp_path / "no_such_file.json"),))
    status = run_benchmark(failing, quick=True, out=tmp_path)
    assert status["state"] == "failed"
    assert status["error"].startswith("exit 2: ") and "no_such_file.json" in status["error"]
    assert (tmp_path / "logs" / "broken.log").exists()


def test_page_only_rewrites_the_page_from_files(tmp_path):
    run = fake_results(tmp_path)
    (tmp_path / STATUS_FILE).write_text(json.dumps(run))
    page = tmp_path / "PAGE.md"
    code = main(["--page-only", "--out", str(tmp_path), "--page", str(page)])
    assert code == 0  # nothing ran this time, so nothing failed this time
    text = page.read_text()
    assert "| LoRA-XS | 30,532 |" in text and "**failed**" in text
    assert "![plot](pareto.png)" in text  # page beside the results


def test_the_page_judges_a_full_run_against_its_45_minutes():
    from benchmarks.results_page import _duration_lines

    full = {"command": "python -m benchmarks.all", "statuses": {"a": {"seconds": 1800.0}, "b": {"seconds": 1200.0}}}
    assert "50.0 min**, over the 45-minute" in _duration_lines(full)[0]
    quick = {"command": "python -m benchmarks.all --quick", "statuses": {"a": {"seconds": 240.0}}}
    assert "within the 5-minute" in _duration_lines(quick)[0]
    assert (
        _duration_lines({"command": "python -m benchmarks.all --only pareto", "statuses": {"a": {"seconds": 1}}}) == []
    )


@pytest.mark.parametrize("bench", REGISTRY, ids=lambda b: b.name)
def test_every_registered_benchmark_exists_and_takes_out(bench):
    """`all` lists only modules that exist, each run with `--out` into the results folder."""
    assert importlib.util.find_spec(bench.module) is not None, bench.module
    for args in (bench.full, bench.quick or ("--out", "{out}")):
        assert "--out" in args and any("{out}" in a for a in args), (bench.name, args)


def test_no_benchmark_imports_the_tests_or_hacks_sys_path():
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    for source in benchmarks.rglob("*.py"):
        text = source.read_text()
        assert "from tests" not in text and "import tests" not in text, source
        assert "sys.path.insert" not in text, source


# modules that are not benchmarks themselves: helpers, and children a benchmark runs (recipe_run, secagg_signing)
HELPERS = {
    "all",
    "result_files",
    "results_page",
    "simulation_cases",
    "federated_loop",
    "federated_methods",
    "deployment_load_report",
    "synthetic_reviews",
    "small_folders",
    "recipe_run",
    "secagg_signing",
    "__init__",
}


@pytest.mark.parametrize(
    "module",
    sorted(
        ".".join(p.relative_to(Path(__file__).resolve().parents[1]).with_suffix("").parts)
        for p in (Path(__file__).resolve().parents[1] / "benchmarks").rglob("*.py")
        if p.stem not in HELPERS
    ),
)
def test_every_benchmark_is_a_main_taking_argv_and_out(module, capsys):
    main = importlib.import_module(module).main
    assert list(inspect.signature(main).parameters) == ["argv"], module
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "--out" in capsys.readouterr().out, module
