"""The house move kept behaviour: a run folder made by the code before it (tests/fixtures/old_run,
see tests/fixtures/README.md) resumes with nothing redone and evaluates to the very same returns;
the layering holds, no import circle, and no run-folder path is spelled outside RunDir."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OLD_RUN = ROOT / "tests" / "fixtures" / "old_run"
PACKAGES = ("worldlab", "generators", "envs", "agents", "scripts")
"""left to right: a package may import those to its left only."""


def _digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.parts[len(run.parts)] in
            ("checkpoints", "data", "latents", "eval.json")}


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    run = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, run)
    return run


def test_an_old_run_folder_resumes_with_nothing_redone(old_run: Path) -> None:
    before = _digests(old_run)
    out = subprocess.run([sys.executable, "scripts/dream_train.py", "car_racing", "--resume", "--out", str(old_run),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "real score 11.0" in out.stdout, out.stdout
    assert _digests(old_run) == before  # no shard, checkpoint, controller or eval.json rewritten
    assert (old_run / "report.md").is_file()
    assert "collecting" not in out.stdout and "evolving" not in out.stdout and "evaluating" not in out.stdout


def test_an_old_run_folder_evaluates_to_the_same_returns(old_run: Path) -> None:
    old = json.loads((old_run / "eval.json").read_text())
    out = subprocess.run([sys.executable, "scripts/evaluate.py", str(old_run), "--episodes", "2", "--seed", "0",
                          "--max-steps", "25", "--workers", "1", "--backend", "processes"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    new = json.loads(out.stdout.splitlines()[0])
    assert new["seeds"] == old["seeds"] and new["lengths"] == old["lengths"]
    assert f"{old['mean']:.1f} ± {old['std']:.1f} over 2 episodes" in out.stdout


def test_an_old_run_folder_goes_on_for_another_round(old_run: Path, cli: Callable[..., subprocess.CompletedProcess]) -> None:
    """The resume rules are the old ones: --rounds may grow; the new round builds on the old ones."""
    out = cli("dream_train.py", "car_racing", "--resume", "--out", str(old_run), "--rounds", "3", "--no-progress",
              "--backend", "processes", "--set", "eval.probes=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (old_run / "checkpoints" / "controller_r2.npz").is_file()
    assert json.loads((old_run / "config.json").read_text())["rounds"] == 3
    refused = cli("dream_train.py", "car_racing", "--resume", "--out", str(old_run), "--set", "cma.popsize=6",
                  "--no-progress")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "differs in cma.popsize" in refused.stderr and "--generations" in refused.stderr


# -- the layering -----------------------------------------------------------------------------------


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            base = node.module
            if node.level:
                pkg = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*pkg, node.module])
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}


def test_no_import_runs_to_the_right_of_the_layering() -> None:
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    bad = [f"{m} -> {i}" for m, deps in _graph().items() for i in deps
           if rank[i.split(".")[0]] > rank[m.split(".")[0]]]
    assert not bad, bad


def test_no_import_circle() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a circle between modules
    edges = {m: {d for d in deps if not (m.count(".") < d.count(".") and d.startswith(m + "."))}
             for m, deps in graph.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if seen.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m)


RUN_FILES = ("checkpoints", "config.json", "eval.json", "metrics.jsonl", "manifest.json", "report.md", "vae.pt",
             "mdrnn.pt", "controller.npz", "generator.pt", "latents", "videos", "samples", "tau_sweep")


def test_no_run_folder_path_outside_rundir() -> None:
    """Run-folder file names are spelled in worldlab/rundir.py only (strings in docstrings and
    comments are documentation, not paths)."""
    found = []
    for name, path in _modules().items():
        if name == "worldlab.rundir":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # path / "name"
                for side in (node.left, node.right):
                    if isinstance(side, ast.Constant) and side.value in RUN_FILES and id(side) not in docstrings:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} / {side.value!r}")
    assert not found, found


def test_report_scripts_own_one_section_each_of_a_shared_doc(tmp_path: Path) -> None:
    from worldlab.io import splice_section, write_doc_section

    doc = tmp_path / "D.md"
    write_doc_section(doc, "a", ["alpha"], "python scripts/a.py --x 1 ", head="# Head\n")
    write_doc_section(doc, "b", ["beta"])
    write_doc_section(doc, "a", ["alpha 2"])  # rewritten in place, b kept
    text = doc.read_text()
    assert text.startswith("# Head\n") and text.index("<!-- a:begin -->") < text.index("<!-- b:begin -->")
    assert splice_section(text, "a", None) == "alpha 2" and splice_section(text, "b", None) == "beta"
    write_doc_section(doc, "c", ["gamma"], "python scripts/c.py")
    assert splice_section(doc.read_text(), "c", None) == "gamma\nReproduce:\n\n```\npython scripts/c.py\n```"
    assert not list(tmp_path.glob(".*"))  # written through a temp file and renamed


def test_generator_report_keeps_every_section_other_commands_wrote(script, tmp_path: Path) -> None:
    """A rerun of generator_report.py rewrites GENERATORS.md: the sections that text_report, the
    latent-prior and VQ-GAN reports (or any other command) wrote survive it."""
    gr = script("generator_report")
    doc = tmp_path / "G.md"
    doc.write_text("old head\n\n<!-- vqgan:begin -->\nVQ rows\n<!-- vqgan:end -->\n\n"
                   "<!-- someone-else:begin -->\ntheir rows\n<!-- someone-else:end -->\n", encoding="utf-8")
    new = "new head\n<!-- text-models:begin -->\n<!-- text-models:end -->\n<!-- vqgan:begin -->\n<!-- vqgan:end -->\ntail\n"
    out = gr.keep_sections(doc, new)
    assert out.startswith("new head") and "old head" not in out
    assert "<!-- vqgan:begin -->\nVQ rows\n<!-- vqgan:end -->\ntail" in out  # in the place left for it
    assert out.rstrip().endswith("<!-- someone-else:begin -->\ntheir rows\n<!-- someone-else:end -->")
    assert "vqgan" in gr.KEPT_SECTIONS


def test_atomic_writes_give_files_the_permissions_a_plain_write_would(tmp_path: Path) -> None:
    """``mkstemp`` makes its temp file 0o600: renamed as it is, every checkpoint, figure and report
    would be unreadable to anyone else on the machine. A new file gets 0o666 less the umask, a
    replaced file keeps its own mode."""
    from worldlab.io import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # under the process's umask, as atomic writes read it
    new = atomic_write_text(tmp_path / "new.json", "{}")
    assert new.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 != 0o600
    kept = tmp_path / "run.sh"
    kept.write_text("#!/bin/sh\n")
    kept.chmod(0o750)
    atomic_write_text(kept, "#!/bin/sh\necho\n")
    assert kept.stat().st_mode & 0o777 == 0o750 and kept.read_text().endswith("echo\n")


def test_a_figure_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Report figures go through a temp file and a rename: a savefig that fails halfway leaves the
    old figure as it was and no temp file behind; one that works writes a PNG of the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldlab.io import atomic_savefig

    out = tmp_path / "figures" / "gap.png"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    atomic_savefig(fig, out, dpi=50)
    first = out.read_bytes()
    assert first[:8] == b"\x89PNG\r\n\x1a\n"

    def broken(buf, **kw):  # the backend fails after writing part of the image
        buf.write(first[:100])
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_savefig(fig, out)
    plt.close(fig)
    assert out.read_bytes() == first and [p.name for p in out.parent.iterdir()] == ["gap.png"]
