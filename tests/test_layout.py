"""The package's layout rules (README, "Layout"), read from the code's own imports: no import cycle inside
vae/ and flows/ (imports inside functions included), each outside engine imported only in its place, flows/
reaching vae/ only through its public rooms and vae/ never importing flows/, modules and functions of a
readable size in both, and `vae --help` free of the heavy imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLACES = {"mlflow": "vae/tracking/", "optuna": "vae/tune/", "optuna_integration": "vae/tune/"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 60
# What the Prefect flows may import of the package: the night's steps and parameters, the records they pass,
# and the few plain helpers around them. The engines (vae.tracking's MLflow, vae.tune's Optuna, training) stay
# behind the steps.
FLOW_ROOMS = ("vae.night", "vae.code", "vae.errors", "vae.records", "vae.stores", "vae.summaries", "vae.telemetry")


def modules(*roots: str) -> dict[str, Path]:
    """Dotted name -> file of every module under the roots (default vae/; flows/ has no subfolder)."""
    out = {}
    for root in roots or ("vae",):
        for path in sorted((ROOT / root).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path] | None = None) -> list[tuple[str, int]]:
    """(module imported, line) for every import statement in the file, wherever it stands. `from pkg import
    x` imports pkg.x when that is a module of `known`, else pkg (whose attribute x is then taken)."""
    known = known or {}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub if sub in known else base, node.lineno))
    return found


def graph(*roots: str) -> dict[str, set[str]]:
    mods = modules(*roots)
    return {name: {m for m, _ in imports(path, name, mods) if m in mods and m != name} for name, path in mods.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_inside_the_package_or_the_flows():
    g = graph("vae", "flows")
    assert any(n.startswith("flows.") for n in g) and any(m.startswith("vae.") for m in g["flows.pipeline"])
    found = cycle(g)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_flows_reach_the_package_only_through_its_public_rooms():
    wrong, used = [], set()
    for name, path in modules("flows").items():
        for module, line in imports(path, name, modules()):
            if module.split(".")[0] == "vae":
                used.add(module)
                if module != "vae" and not module.startswith(tuple(r + s for r in FLOW_ROOMS for s in ("", "."))):
                    wrong.append(f"{path.relative_to(ROOT).as_posix()}:{line} imports {module}")
    assert not wrong, f"flows/ imports vae only through {', '.join(FLOW_ROOMS)}:\n" + "\n".join(wrong)
    assert {"vae.night.steps", "vae.night.params"} <= used, used  # the rule looks at real imports


def test_the_cycle_check_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_each_outside_engine_is_imported_only_in_its_place():
    wrong = []
    for name, path in modules().items():
        rel = path.relative_to(ROOT).as_posix()
        for module, line in imports(path, name):
            top = module.split(".")[0]
            if top == "prefect" or top == "flows":
                wrong.append(
                    f"{rel}:{line} imports {module} (prefect lives in flows/ only, and vae/ never imports flows/)"
                )
            elif top in PLACES and not rel.startswith(PLACES[top]):
                wrong.append(f"{rel}:{line} imports {module} (only {PLACES[top]} may)")
    assert not wrong, "\n".join(wrong)


def test_the_core_is_flat_and_imports_no_subpackage_above_it():
    core = {n for n, p in modules().items() if p.parent == ROOT / "vae" and n not in ("vae", "vae.__main__")}
    g = graph()
    upward = [
        f"{n} -> {m}"
        for n in core
        for m in g[n]
        if m.startswith(("vae.uses", "vae.tune", "vae.tracking", "vae.cli", "vae.night"))
    ]
    assert not upward, "the core imports a layer above it: " + ", ".join(sorted(upward))


def test_modules_and_functions_stay_readable():
    long = []
    for path in modules("vae", "flows").values():
        text = path.read_text()
        rel = path.relative_to(ROOT).as_posix()
        sizes = [(rel, len(text.splitlines()), MAX_MODULE_LINES)]
        sizes += [
            (f"{rel}:{node.lineno} {node.name}()", node.end_lineno - node.lineno + 1, MAX_FUNCTION_LINES)
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        long += [f"{where}: {n} lines" for where, n, limit in sizes if n > limit]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"]])
def test_help_and_version_load_no_heavy_package(argv):
    code = (
        "import sys, runpy; sys.argv = ['vae', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('vae', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'optuna', 'prefect', 'numpy', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', ','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT)
    assert "HEAVY \n" in r.stdout or r.stdout.rstrip().endswith("HEAVY"), r.stdout[-500:] + r.stderr[-500:]
