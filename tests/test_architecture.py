"""The package's shape, as ARCHITECTURE.md states it: no import cycle between modules (imports
inside functions count too), the config package and the CLI's error explainer free of TensorFlow
at import, modules short enough to read in one sitting, and the tree ARCHITECTURE.md draws."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "resnet_train"
MAX_LINES = 300  # a module; a function: 60 (test_functions_fit_on_a_screen)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set) -> set:
    """The resnet_train modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule (pkg's __init__ is not a dependency of it);
            # `from pkg import name` imports pkg.
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            names = subs if len(subs) == len(node.names) else [node.module, *subs]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def graph() -> dict:
    paths = [p for p in PACKAGE.rglob("*.py") if "configs" not in p.parts]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports(p, modules) - {module_name(p)} for p in paths}


def cycles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_imports_the_cli_and_the_tools_import_no_cli():
    edges = graph()
    users = sorted(
        m
        for m, deps in edges.items()
        if any(d.startswith("resnet_train.cli") for d in deps) and not m.startswith("resnet_train.cli")
    )
    assert users == []
    training = sorted(
        m
        for m, deps in edges.items()
        if m.startswith(("resnet_train.training", "resnet_train.data", "resnet_train.models", "resnet_train.optim"))
        and any(d.startswith("resnet_train.tools") for d in deps)
    )
    assert training == []  # tools build on training, never the reverse


def test_modules_are_short_enough_to_read_in_one_sitting():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_architecture_md_names_every_module_in_its_folder():
    """Each module appears in ARCHITECTURE.md's tree (by file name), and each folder the tree
    names exists: the folders and the document say the same thing."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    tree = text[text.index("```\nresnet_train/") : text.index("```", text.index("```\nresnet_train/") + 3)]
    for path in PACKAGE.rglob("*.py"):
        if "configs" in path.parts or path.name in ("__init__.py", "__main__.py"):
            continue
        assert path.name in tree or path.stem in tree, f"{path.relative_to(ROOT)} is not in ARCHITECTURE.md's tree"
    for folder in re.findall(r"^[├└]─ ([a-z_]+)/", tree, re.M):
        assert (PACKAGE / folder).is_dir(), folder


def test_functions_fit_on_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert long == []
