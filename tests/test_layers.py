"""Imports run downwards: a lower layer of the package never imports a higher one.

Layers, lowest first: the model files (``models/unet_fcn``, which travel alone with checkpoints and
import nothing from ``pannuke_hf``); image conversion (``images``) and model loading
(``models/loading``); ``inference``; ``visualization`` and ``exports``; the demo; the commands.
Read from the source (``ast``), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pannuke_hf"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the ``pannuke_hf`` modules a file imports (anywhere in it)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names |= {f"{target}.{alias.name}" for alias in node.names}
    return {name for name in names if name == "pannuke_hf" or name.startswith("pannuke_hf.")}


# (files, package prefixes they must not import); the model files may import each other only
RULES = [
    (
        "images.py",
        ("pannuke_hf.visualization", "pannuke_hf.inference", "pannuke_hf.commands", "pannuke_hf.demo"),
    ),
    ("models/loading.py", ("pannuke_hf.commands", "pannuke_hf.demo", "pannuke_hf.visualization")),
    ("inference.py", ("pannuke_hf.visualization", "pannuke_hf.commands", "pannuke_hf.demo")),
    ("visualization.py", ("pannuke_hf.commands", "pannuke_hf.demo")),
    ("demo/*.py", ("pannuke_hf.commands",)),
    ("slides/**/*.py", ("pannuke_hf.commands", "pannuke_hf.demo")),
    ("training/*.py", ("pannuke_hf.commands", "pannuke_hf.demo")),
    ("models/unet_fcn/*_unet_fcn.py", ("pannuke_hf",)),
]


#: What the model files may import from the package: each other (they are saved side by side).
SIBLINGS = "pannuke_hf.models.unet_fcn.configuration_unet_fcn"


@pytest.mark.parametrize(("pattern", "forbidden"), RULES, ids=[rule[0] for rule in RULES])
def test_no_lower_layer_imports_a_higher_one(pattern, forbidden):
    files = sorted(PACKAGE.glob(pattern))
    if not files and "*" in pattern:
        pytest.skip(f"no files match {pattern}")
    assert files, pattern
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in files
        for name in sorted(imported_modules(path))
        if any(name == bad or name.startswith(bad + ".") for bad in forbidden)
        and not name.startswith(SIBLINGS)
    ]
    assert not wrong, "; ".join(wrong)


def test_the_old_import_paths_still_work():
    """``to_rgb_uint8`` is still importable from ``visualization`` (re-exported), ``load_model`` from
    the predict command; both are the library's one definition."""
    from pannuke_hf import images, visualization
    from pannuke_hf.commands import predict
    from pannuke_hf.models import loading

    assert visualization.to_rgb_uint8 is images.to_rgb_uint8
    assert predict.load_model is loading.load_model


def test_the_predict_command_module_imports_no_torch():
    """`pannuke-hf predict --help` and its early errors stay instant: image reading and model
    loading import torch / transformers only when called."""
    import subprocess
    import sys

    code = (
        "import sys, pannuke_hf.commands.predict; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
