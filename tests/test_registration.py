"""The UNet-FCN registration with transformers, made lazily by `import pannuke_hf`.

`import pannuke_hf` imports no transformers; the Auto classes and the image-segmentation pipeline
must still resolve "unet_fcn" whatever the order of imports. Every case runs in a fresh interpreter
with RuntimeWarning as an error (a failed registration hook warns).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHECK_AUTO = """
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation
config = AutoConfig.for_model("unet_fcn", base_channels=4, num_stages=2)
assert type(config).__name__ == "UNetFCNConfig", type(config)
assert config.num_labels == 6 and config.id2label[1] == "neoplastic", config.id2label
model = AutoModelForSemanticSegmentation.from_config(config)
assert type(model).__name__ == "UNetFCNForSemanticSegmentation", type(model)
assert type(AutoModel.from_config(config)).__name__ == "UNetFCNModel"
processor = AutoImageProcessor.from_pretrained(CHECKPOINT)
assert type(processor).__module__.startswith("pannuke_hf."), type(processor)
print("resolved")
"""


def run_fresh(code: str, checkpoint=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    return subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", f"CHECKPOINT = {str(checkpoint)!r}\n" + code],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,  # a question about custom code would fail, not hang
        timeout=600,
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny saved UNet-FCN (model + processor + remote code files), made in this process."""
    import pannuke_hf  # noqa: F401
    from pannuke_hf.models.unet_fcn import (
        UNetFCNConfig,
        UNetFCNForSemanticSegmentation,
        UNetFCNImageProcessor,
    )

    folder = tmp_path_factory.mktemp("unet_fcn_checkpoint")
    UNetFCNForSemanticSegmentation(UNetFCNConfig(base_channels=4, num_stages=2)).save_pretrained(folder)
    UNetFCNImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    assert "auto_map" in (folder / "config.json").read_text()  # the files a remote-code load would run
    return folder


SLOW = pytest.mark.slow  # each case is a fresh interpreter importing torch and transformers


@pytest.mark.parametrize(
    "prelude",
    [
        pytest.param(
            "import pannuke_hf\nimport sys\nassert 'transformers' not in sys.modules\nimport transformers",
            id="pannuke_first",
        ),
        # a model file first: transformers loads Auto modules while that file is still importing
        pytest.param("import pannuke_hf.models.unet_fcn.modeling_unet_fcn", id="model_file"),
        pytest.param(
            "import transformers\nfrom transformers import AutoConfig, AutoModel, AutoImageProcessor\n"
            "import pannuke_hf",
            id="transformers_first",
            marks=SLOW,
        ),
        pytest.param(
            "import pannuke_hf\nfrom transformers import Trainer, pipeline", id="trainer", marks=SLOW
        ),
        pytest.param(
            "import pannuke_hf\nfrom transformers import AutoImageProcessor",
            id="processor_auto_first",
            marks=SLOW,
        ),
        pytest.param(
            "from pannuke_hf.models.unet_fcn.image_processing_unet_fcn import UNetFCNImageProcessor as P\n"
            "assert P().image_mean[0] == 123.675",
            id="processor_file",
            marks=SLOW,
        ),
    ],
)
def test_auto_classes_resolve_unet_fcn(checkpoint, prelude):
    done = run_fresh(prelude + "\n" + CHECK_AUTO, checkpoint)
    assert done.returncode == 0 and "resolved" in done.stdout, done.stderr[-3000:]


def test_pipeline_neither_asks_about_custom_code_nor_warns(checkpoint):
    code = textwrap.dedent(
        """
        import builtins
        def no_questions(*args, **kwargs):
            raise SystemExit("asked: " + str(args[:1]))
        builtins.input = no_questions
        import numpy as np
        import PIL.Image
        import pannuke_hf
        from transformers import pipeline
        from transformers.utils import logging
        logging.set_verbosity_warning()
        segmenter = pipeline("image-segmentation", model=CHECKPOINT)
        assert type(segmenter.model).__module__.startswith("pannuke_hf."), type(segmenter.model)
        result = segmenter(PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8)), subtask="semantic")
        assert result and all({"label", "mask"} <= set(item) for item in result), result
        print("pipeline ok")
        """
    )
    done = run_fresh(code, checkpoint)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "pipeline ok" in done.stdout, output[-3000:]
    assert "not supported for image-segmentation" not in output
    assert "custom code" not in output and "trust_remote_code" not in output


def test_when_imported_runs_after_the_module_and_never_breaks_an_import(tmp_path):
    (tmp_path / "hooked_pkg").mkdir()
    (tmp_path / "hooked_pkg" / "__init__.py").write_text("")
    (tmp_path / "hooked_pkg" / "target.py").write_text("VALUE = 42\nimport hooked_pkg.inner\n")
    (tmp_path / "hooked_pkg" / "inner.py").write_text("")
    code = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        from pannuke_hf._import_hooks import when_imported
        seen = []
        when_imported("hooked_pkg.target", lambda module: seen.append(module.VALUE))
        # registered while target is importing (it imports inner): runs once target has finished
        when_imported("hooked_pkg.inner", lambda _: when_imported("hooked_pkg.target", lambda m: seen.append(-m.VALUE)))
        # registered by a callback of target (target still counts as importing): runs too
        when_imported(
            "hooked_pkg.target",
            lambda _: when_imported("hooked_pkg.target", lambda m: seen.append("nested")),
        )
        def broken(module):
            raise RuntimeError("boom")
        when_imported("hooked_pkg.target", broken)
        assert seen == []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import hooked_pkg.target
        assert seen == [42, -42, "nested"], seen
        assert any("boom" in str(w.message) for w in caught), caught
        when_imported("hooked_pkg.target", lambda module: seen.append("now"))  # already imported: at once
        assert seen == [42, -42, "nested", "now"], seen
        assert hooked_pkg.target.__spec__.loader.__class__.__name__ == "SourceFileLoader"
        print("hooks ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "hooks ok" in done.stdout, done.stderr[-3000:]
