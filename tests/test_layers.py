"""Layers depend one way (DESIGN.md): a module may import only from its own or lower layers."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

LAYERS = [  # lowest first
    ["mpc.ring", "mpc.prg"],
    ["mpc.protocols"],
    ["mpc.ir", "mpc.compiler"],
    ["mpc.runtime", "mpc.data_files"],
    ["mpc.net"],
    ["parties"],
    ["mpc.api", "mpc.lifetimes", "mpc.api_functions", "mpc.api_methods", "mpc.torch_api", "mpc.inference", "mpc.training", "mpc.models", "mpc.model_files", "mpc.bench_models", "mpc.bench_profile", "mpc.bench_train", "mpc.bench_network", "mpc.bench_bandwidth", "mpc.bench_tls", "mpc.netns", "mpc.cluster_processes", "mpc.client", "mpc.remote", "mpc.status", "mpc.launcher", "mpc.cli", "mpc.bench", "mpc.reference", "mpc.demo", "mpc.jobfile", "mpc.plain_training", "mpc.train_jobs", "mpc.train_report", "mpc.checkpoints"],
]


def layer_of(module: str) -> int | None:
    for level, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in list((ROOT / "mpc").rglob("*.py")) + list((ROOT / "parties").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        own = layer_of(module)
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                other = layer_of(name)
                if other is not None and other > own:
                    violations.append(f"{module} (layer {own}) imports {name} (layer {other})")
    assert not violations, "\n".join(violations)


def test_every_module_is_placed_in_a_layer():
    unplaced = []
    for path in (ROOT / "mpc").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module != "mpc" and layer_of(module) is None:
            unplaced.append(module)
    assert not unplaced, unplaced
