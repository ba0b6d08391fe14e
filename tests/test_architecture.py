"""Architecture rules (issue 25), read from the source with ast: who may parse or write a contract
file, who may import the CLI, no import circle, no module over 500 lines, no hidden imports."""

from __future__ import annotations

import ast
from pathlib import Path

import evilspectra

SRC = Path(evilspectra.__file__).parent

# JSON parsing outside the artefacts package, each with why it is not a contract file's record read
PARSES_JSON = {
    "data": "user datasets (JSON Lines / JSON arrays), not artefacts",
    "evaluate.judge_cache": "values of the judge cache's sqlite rows, not a file",
    "cli.toy_cmd": "toy_build.json, the toy world's build record shipped with its weights, not a run artefact",
    "sweep_run": "sweep.json and its history: the SweepSpec dumped with credentials redacted; earlier specs "
    "are kept verbatim and may not validate under today's SweepSpec",
    # modules other engineers edit in phase 1 (their own issues); each reads a contract file as a dict
    "evaluate.rejudge": "not converted in phase 1 (rejudge is edited for issue 27): the source summary and samples",
    "inspect_log": "not converted in phase 1 (Inspect export): the summary as a dict",
    "integrations.trackers": "not converted in phase 1 (trackers): manifest and summary as dicts",
    "cli.judges_cmd": "not converted in phase 1: agreement.json has no record yet; summaries as dicts",
}
# contract files written without their record (atomic_write_json of a dict)
WRITES_JSON = {
    "sweep_run": "sweep.json: SweepSpec.model_dump with every judge URL redacted (sweep_spec.public_spec)",
    "cli.judges_cmd": "not converted in phase 1: agreement.json has no record yet",
}
# function-level imports kept on purpose; each says why in a comment on its line or the line above
LAZY_OK_WORDS = ("start-up", "optional", "imported when", "imported here", "extra", "takes", "slow", "only to run")
# the modules phase 1 of issue 25 wrote or split: held to the hidden-import rule now
PHASE_1_MODULES = (
    "artefacts.io",
    "artefacts.paths",
    "artefacts.records",
    "artefacts.machine",
    "rundir",
    "spectra",
    "spectra_linalg",
    "spectra_io",
    "spectra_table",
    "spectra_plot",
    "regulariser",
    "schedule",
    "audit",
    "audit_references",
    "audit_findings",
    "audit_policy",
    "audit_render",
    "card",
    "sweep",
    "sweep_spec",
    "sweep_state",
    "sweep_run",
    "sweep_estimate",
    "results",
    "fmt",
    "evaluate.metrics",
    "evaluate.runner",
    "evaluate.selection",
    "integrations.hf_trainer",
)


def modules() -> dict[str, Path]:
    """Dotted name (without `evilspectra.`) -> file, for every module of the package."""
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name or "__init__"] = path
    return out


MODULES = modules()


def _calls(tree: ast.AST) -> list[tuple[str, int]]:
    """(callee, line) of every call, the callee as written: `json.loads`, `read_json`, ..."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                found.append((f"{f.value.id}.{f.attr}", node.lineno))
            elif isinstance(f, ast.Name):
                found.append((f.id, node.lineno))
    return found


def _offenders(callees: set[str], allowed: dict[str, str]) -> list[str]:
    bad = []
    for name, path in MODULES.items():
        if name.startswith("artefacts") or name in allowed:
            continue
        tree = ast.parse(path.read_text())
        bad += [f"{name}:{line} {callee}" for callee, line in _calls(tree) if callee in callees]
    return bad


PARSERS = {"json.load", "json.loads", "read_json"}
WRITERS = {"atomic_write_json"}


def test_no_module_outside_the_artefacts_package_parses_a_contract_file():
    assert _offenders(PARSERS, PARSES_JSON) == []


def test_every_contract_json_is_written_from_its_record():
    assert _offenders(WRITERS, WRITES_JSON) == []


def test_the_allow_lists_name_modules_that_exist_and_still_need_them():
    for allowed, callees in ((PARSES_JSON, PARSERS), (WRITES_JSON, WRITERS)):
        for name in allowed:
            calls = {c for c, _ in _calls(ast.parse(MODULES[name].read_text()))}
            assert calls & callees, f"{name} no longer parses/writes JSON: drop it from the allow-list"


# ---------------------------------------------------------------------------------- imports


def _imports(name: str, path: Path, module_level: bool) -> list[tuple[str, int]]:
    """(imported evilspectra module without the prefix, line): module-level statements only, or
    only those inside functions. `from evilspectra.x import y` names x.y when y is a module."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or (id(node) in top) != module_level:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif node.level:  # relative: resolve against the package
            base = name.split(".")[: -node.level] if path.name != "__init__.py" else name.split(".")
            targets = [".".join(["evilspectra", *base, *(node.module or "").split(".")]).rstrip(".")]
        else:
            targets = [node.module or ""]
        for target in targets:
            if target != "evilspectra" and not target.startswith("evilspectra."):
                continue
            rest = target.removeprefix("evilspectra").removeprefix(".")
            subs = [f"{rest}.{a.name}".lstrip(".") for a in getattr(node, "names", [])]
            named = [s for s in subs if s in MODULES] if isinstance(node, ast.ImportFrom) else []
            out += [(m, node.lineno) for m in (named or [rest or "__init__"])]
    return out


def test_no_stage_imports_the_cli():
    bad = [
        f"{name}:{line} imports {target}"
        for name, path in MODULES.items()
        if not name.startswith("cli") and name != "__main__"
        for level in (True, False)
        for target, line in _imports(name, path, level)
        if target == "cli" or target.startswith("cli.")
    ]
    assert bad == []


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (and the packages they sit in)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges = set()
        for target, _ in _imports(name, path, module_level=True):
            parts = target.split(".")
            edges |= {".".join(parts[: i + 1]) for i in range(len(parts))} & set(MODULES)
        graph[name] = edges - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the list of modules on it, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_the_package():
    assert _cycle(_graph()) is None


def test_the_circle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_audit_and_card_are_no_longer_a_circle_even_through_functions():
    """card uses the audit's parts; the audit never imports the card (the command composes them)."""
    for name in ("audit", "audit_references", "audit_findings", "audit_policy", "audit_render"):
        targets = {t for level in (True, False) for t, _ in _imports(name, MODULES[name], level)}
        assert "card" not in targets, name


def test_training_and_the_estimate_import_no_plotting_and_no_trainer():
    """What `train` imports of the spectra code is the regulariser alone; the HF integration takes the
    checkpoint schedule without importing train; the dry-run estimate imports no training code."""
    reachable = _reachable(_graph())
    assert not reachable["train"] & {"spectra", "spectra_plot", "spectra_table"}
    assert "train" not in reachable["integrations.hf_trainer"]
    assert not reachable["sweep_estimate"] & {"train", "sweep_run", "models", "data"}


def _reachable(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        out[start] = seen
    return out


def test_function_level_imports_of_phase_1_modules_say_why():
    """A function-level import hides a dependency unless a comment says why (start-up speed, an
    optional extra): on its line or just above it (a block of imports shares one comment)."""
    bad = []
    for name in PHASE_1_MODULES:
        path = MODULES[name]
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top and node.col_offset > 0:
                context = " ".join(lines[max(0, node.lineno - 5) : node.end_lineno]).lower()  # its block
                if not any(word in context for word in LAZY_OK_WORDS):
                    bad.append(f"{name}:{node.lineno}")
    assert bad == []


# ---------------------------------------------------------------------------------- sizes

MAX_LINES = 500


def test_no_module_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
