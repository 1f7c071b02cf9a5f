"""The demo's generated-data cache: keyed on the generator's code, patch count and seed; tests
keep it inside a temporary folder ($PANNUKE_HF_DEMO_CACHE)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import pannuke_hf.data.synthetic as synthetic
from pannuke_hf.training import data

GENERATOR_SOURCE = Path(__file__).resolve().parents[1] / "pannuke_hf" / "data" / "synthetic.py"


@pytest.fixture
def generations(monkeypatch, tmp_path):
    """Route the demo cache into tmp_path and count the generator's runs (it still runs)."""
    monkeypatch.setenv("PANNUKE_HF_DEMO_CACHE", str(tmp_path / "demo-cache"))
    calls = []
    real = synthetic.make_synthetic_folds

    def counting(out_dir, patches_per_fold=8, seed=0, **kwargs):
        calls.append((Path(out_dir), patches_per_fold, seed))
        return real(out_dir, patches_per_fold, seed=seed, **kwargs)

    monkeypatch.setattr(synthetic, "make_synthetic_folds", counting)
    return calls


def test_default_folder_is_keyed_on_generator_code_count_and_seed(generations, tmp_path):
    digest = hashlib.sha256(GENERATOR_SOURCE.read_bytes()).hexdigest()  # computed here, independently
    root = data.ensure_synthetic_data(None, 2, 5)
    assert root == tmp_path / "demo-cache" / f"raw-2-5-{digest[:12]}"
    assert all((root / f"Fold {k}").is_dir() for k in (1, 2, 3))
    assert digest in (root / ".pannuke_hf_synthetic").read_text()
    assert len(generations) == 1
    # The same generation again: reused, nothing generated.
    assert data.ensure_synthetic_data(None, 2, 5) == root and len(generations) == 1
    # Another count or seed: another folder.
    assert data.ensure_synthetic_data(None, 2, 6) != root and len(generations) == 2


def test_changed_generator_code_is_generated_again(generations, monkeypatch, tmp_path):
    first = data.ensure_synthetic_data(None, 2, 0)
    explicit = data.ensure_synthetic_data(tmp_path / "mine", 2, 0)
    assert len(generations) == 2
    monkeypatch.setattr(data, "synthetic_generator_digest", lambda: "f" * 64)  # "edited" generator
    second = data.ensure_synthetic_data(None, 2, 0)
    assert second != first and second.name.endswith("ffffffffffff") and len(generations) == 3
    # An explicit folder with a stale marker is regenerated in place.
    assert data.ensure_synthetic_data(tmp_path / "mine", 2, 0) == explicit and len(generations) == 4
    assert "f" * 64 in (explicit / ".pannuke_hf_synthetic").read_text()


def test_never_generates_into_a_folder_it_did_not_create(generations, tmp_path):
    real = tmp_path / "real_pannuke"
    (real / "Fold 1").mkdir(parents=True)
    with pytest.raises(ValueError, match="real_pannuke.*not empty"):
        data.ensure_synthetic_data(real, 2, 0)
    assert generations == [] and sorted(p.name for p in real.iterdir()) == ["Fold 1"]
