"""What the tool loads cannot run code: no pickles, Keras' safe mode, YAML only through safe
loaders, configs only name our own classes, no shell. (The YAML side of configs:
tests/test_bad_input.py's 'config with a YAML exploit'.)

The sources are checked on their syntax trees, not line by line: a call split over lines, an
aliased import (`from yaml import unsafe_load as load`) or a keyword on the next line is seen."""

import ast
import re
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "resnet_train").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
SOURCES += sorted((ROOT / "hydra_plugins").rglob("*.py"))  # our Optuna sweeper

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "marshal", "jsonpickle", "joblib"}
# yaml.load / load_all run arbitrary tags unless given a safe loader; these do so whatever they are given.
YAML_UNSAFE = {
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
    "yaml.full_load_all",
    "yaml.UnsafeLoader",
    "yaml.FullLoader",
    "yaml.Loader",
    "yaml.CLoader",
    "yaml.CFullLoader",
    "yaml.CUnsafeLoader",
}
YAML_SAFE_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "yaml.BaseLoader", "yaml.CBaseLoader"}
SHELL_CALLS = {
    "os.system",
    "os.popen",
    "subprocess.getoutput",
    "subprocess.getstatusoutput",
    "asyncio.create_subprocess_shell",
}
PROCESS_CALLS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")} | {
    f"os.{f}"
    for f in (
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "execl",
        "execle",
        "execlp",
        "execlpe",
        "spawnv",
        "spawnve",
        "spawnvp",
        "spawnvpe",
        "spawnl",
        "spawnle",
        "spawnlp",
        "spawnlpe",
        "posix_spawn",
        "posix_spawnp",
    )
}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "cmd", "cmd.exe", "powershell", "pwsh"}
CONFIG_IMPORTS = {
    "hydra.utils.instantiate",
    "hydra.utils.call",
    "hydra.utils.get_class",
    "hydra.utils.get_method",
    "hydra.utils.get_object",
    "importlib.import_module",
    "importlib.__import__",
    "builtins.__import__",
    "pydoc.locate",
}
CODE_BUILTINS = {"eval", "exec", "compile"}


class _Walker(ast.NodeVisitor):
    """Collects (line, what, source) for every forbidden construct; names are resolved through
    the module's imports, so `import yaml as y; y.unsafe_load(...)` is yaml.unsafe_load. A call
    is reported once, as the whole call (its first line), whatever lines it spans."""

    def __init__(self, source: str):
        self.source = source
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[int, str, str]] = []

    def hit(self, node, what):
        self.found.append((node.lineno, what, ast.get_source_segment(self.source, node) or ""))

    def qualified(self, node) -> str | None:
        """'a.b.c' for a Name / Attribute chain, its head resolved through the imports."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    # ---- imports: a pickle module is refused as such; imported names where they are used ---
    def visit_Import(self, node):
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
            self.check_module(node, alias.name)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        self.check_module(node, module)
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    def check_module(self, node, module):
        if module.split(".")[0] in PICKLE_MODULES:
            self.hit(node, "pickle")

    # ---- a name, called or only referred to (a loader passed as an argument) ----------------
    def check_name(self, node, name) -> None:
        last = name.rsplit(".", 1)[-1]
        if name in YAML_UNSAFE:
            self.hit(node, "unsafe YAML loading")
        elif name.split(".")[0] in PICKLE_MODULES or last in ("read_pickle", "to_pickle"):
            self.hit(node, "pickle")
        elif name in SHELL_CALLS:
            self.hit(node, "a shell")
        elif name in CONFIG_IMPORTS or last in ("instantiate", "__import__"):
            self.hit(node, "config-driven imports")
        elif last == "enable_unsafe_deserialization":
            self.hit(node, "Keras' unsafe deserialisation")
        elif name in {f"builtins.{b}" for b in CODE_BUILTINS}:
            self.hit(node, "eval/exec")

    def visit_Attribute(self, node):
        name = self.qualified(node)
        if name is None:
            self.generic_visit(node)
        else:
            self.check_name(node, name)

    def visit_Name(self, node):
        if node.id in self.aliases or node.id == "__import__":
            self.check_name(node, self.aliases.get(node.id, node.id))

    # ---- calls ------------------------------------------------------------------------------
    def visit_Call(self, node):
        name = self.qualified(node.func)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name is None:
            self.visit(node.func)
        elif isinstance(node.func, ast.Name) and node.func.id in CODE_BUILTINS and node.func.id not in self.aliases:
            self.hit(node, "eval/exec")
        else:
            self.check_name(node, name)  # reported as the whole call
        if name in {"yaml.load", "yaml.load_all"}:
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if loader is None or self.qualified(loader) not in YAML_SAFE_LOADERS:
                self.hit(node, "unsafe YAML loading")
        if name and name.endswith("torch.load") and not _is_constant(keywords.get("weights_only"), True):
            self.hit(node, "pickle")
        if "allow_pickle" in keywords and not _is_constant(keywords["allow_pickle"], False):
            self.hit(node, "numpy pickles")
        if "safe_mode" in keywords and not _is_constant(keywords["safe_mode"], True):
            self.hit(node, "Keras' unsafe loading")
        if "shell" in keywords and not _is_constant(keywords["shell"], False, None):
            self.hit(node, "a shell")
        if name in PROCESS_CALLS and node.args:
            argv = node.args[0]
            first = argv.elts[0] if isinstance(argv, (ast.List, ast.Tuple)) and argv.elts else argv
            if (
                isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.split()
                and Path(first.value.split()[0]).name in SHELLS
            ):
                self.hit(node, "a shell")
        for child in (*node.args, *node.keywords):
            self.visit(child)


def _is_constant(node, *values) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is v for v in values)


def findings(source: str) -> list[tuple[int, str, str]]:
    walker = _Walker(source)
    walker.visit(ast.parse(source))
    return walker.found


def test_the_sources_parse_and_are_all_walked():
    assert len(SOURCES) > 20 and ROOT / "hydra_plugins" / "resnet_train_optuna" / "sweeper.py" in SOURCES
    for path in SOURCES:
        ast.parse(path.read_text(), str(path))


def test_no_source_file_loads_code_or_runs_a_shell():
    hits = []
    for path in SOURCES:
        relative = str(path.relative_to(ROOT))
        for line, what, segment in findings(path.read_text()):
            hits.append(f"{relative}:{line}: {what}: {segment[:120]}")
    assert not hits, "\n".join(hits)


# Each forbidden construct as it could be written, split over lines or aliased: the walker must
# see every one (what a line-by-line scan missed), and none of the safe forms below.
CAUGHT = {
    "pickle import": ("import pickle", "pickle"),
    "pickle load, aliased": ("from pickle import loads as decode\nx = decode(data)", "pickle"),
    "dill": ("import dill", "pickle"),
    "pandas pickle": ("import pandas as pd\ndf = pd.read_pickle(path)", "pickle"),
    "torch.load unsafe": ("import torch\nstate = torch.load(\n    path,\n)", "pickle"),
    "numpy pickles, split": ("import numpy as np\nx = np.load(\n    path,\n    allow_pickle=True,\n)", "numpy pickles"),
    "keras unsafe, split": (
        "import keras\nm = keras.saving.load_model(\n    path,\n    safe_mode=False)",
        "Keras' unsafe loading",
    ),
    "keras unsafe deserialisation": (
        "import keras\nkeras.config.enable_unsafe_deserialization()",
        "Keras' unsafe deserialisation",
    ),
    "yaml.load without a loader": ("import yaml\ncfg = yaml.load(\n    text)", "unsafe YAML loading"),
    "yaml.load, unsafe loader": (
        "import yaml\ncfg = yaml.load(text,\n    Loader=yaml.UnsafeLoader)",
        "unsafe YAML loading",
    ),
    "yaml.load, loader positional": ("import yaml\ncfg = yaml.load(text, yaml.Loader)", "unsafe YAML loading"),
    "yaml.unsafe_load, aliased": ("from yaml import unsafe_load as load\ncfg = load(text)", "unsafe YAML loading"),
    "yaml.full_load": ("import yaml as y\ncfg = y.full_load(\n    text\n)", "unsafe YAML loading"),
    "yaml FullLoader, imported": (
        "import yaml\nfrom yaml import FullLoader\ncfg = yaml.load(text, Loader=FullLoader)",
        "unsafe YAML loading",
    ),
    "an unsafe loader passed on": (
        "import yaml\nparse = functools.partial(yaml.load, Loader=yaml.UnsafeLoader)",
        "unsafe YAML loading",
    ),
    "shell=True, split": ("import subprocess\nsubprocess.run(\n    f'ls {path}',\n    shell=True,\n)", "a shell"),
    "shell from a variable": ("from subprocess import Popen\nPopen(cmd, shell=use_shell)", "a shell"),
    "os.system": ("import os\nos.system(\n    'rm -rf ' + path)", "a shell"),
    "os.system, imported": ("from os import system\nsystem(cmd)", "a shell"),
    "os.popen": ("import os\nos.popen(cmd)", "a shell"),
    "sh -c": ("import subprocess\nsubprocess.check_call(\n    ['bash', '-c', cmd])", "a shell"),
    "eval, split": ("x = eval(\n    text)", "eval/exec"),
    "exec": ("exec(code, {})", "eval/exec"),
    "compile": ("code = compile(text, 'f', 'exec')", "eval/exec"),
    "hydra instantiate, split": (
        "from hydra.utils import instantiate\nobj = instantiate(\n    cfg.model)",
        "config-driven imports",
    ),
    "hydra.utils.instantiate": ("import hydra\nobj = hydra.utils.instantiate(cfg)", "config-driven imports"),
    "importlib": ("import importlib\nm = importlib.import_module(\n    cfg.module)", "config-driven imports"),
    "__import__": ("m = __import__(name)", "config-driven imports"),
}
SAFE = [
    "import yaml\ncfg = yaml.safe_load(text)\ncfg = yaml.load(text, Loader=yaml.SafeLoader)\nyaml.YAMLError",
    "import subprocess\nsubprocess.run(['git', 'status'], check=True)\nsubprocess.run(args, shell=False)",
    "import numpy as np\nnp.load(path)\nnp.load(path, allow_pickle=False)",
    "import keras\nkeras.saving.load_model(path, safe_mode=True)",
    "import re\nre.compile('x')\nmodel.compile(optimizer='sgd')\nmodel.eval()",
    "import torch\ntorch.load(path, weights_only=True)",
]


@pytest.mark.parametrize("snippet, what", CAUGHT.values(), ids=list(CAUGHT))
def test_the_walker_catches(snippet, what):
    found = findings(textwrap.dedent(snippet))
    assert what in {w for _, w, _ in found}, found


def test_the_walker_reports_a_multi_line_call_once_at_its_first_line():
    snippet = "import subprocess\n\nsubprocess.run(\n    cmd,\n    check=True,\n    shell=\n        True,\n)\n"
    # The old line-by-line scan's pattern finds nothing in it: no line holds the whole call.
    assert not [line for line in snippet.splitlines() if re.search(r"shell\s*=\s*True", line)]
    ((line, what, segment),) = findings(snippet)
    assert (line, what) == (3, "a shell") and segment == snippet.strip().split("\n", 2)[2]


@pytest.mark.parametrize("snippet", SAFE)
def test_the_walker_passes_the_safe_forms(snippet):
    assert findings(snippet) == []


def test_config_targets_are_only_our_own_or_hydra_plugins():
    targets = [
        (p.name, m)
        for p in (ROOT / "resnet_train" / "configs").rglob("*.yaml")
        for m in re.findall(r"_target_:\s*(\S+)", p.read_text())
    ]
    assert targets  # the sweep callback at least
    for name, target in targets:
        # Hydra instantiates only callbacks and sweeper samplers (hydra.*); nothing of ours
        # instantiates config-named classes.
        assert target.startswith(("resnet_train.", "optuna.samplers.")), (name, target)


def test_the_export_reload_refuses_a_keras_file_with_code(tmp_path):
    from resnet_train.tools.export import load_predictor

    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match="(?i)lambda|unsafe|safe_mode"):
        load_predictor(path, "keras")
    ok = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    ok.save(tmp_path / "ok.keras")
    assert load_predictor(tmp_path / "ok.keras", "keras")(np.ones((1, 2), np.float32)).shape == (1, 1)
