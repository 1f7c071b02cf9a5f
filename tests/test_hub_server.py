"""Round trips through the fake Hub (tests/hub_server.py) with the real client libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_upload_download_regular_and_lfs(hub_server, tmp_path):
    """A text file goes up as a regular blob, a binary one through the LFS batch API; both come back."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    url = api.create_repo("roundtrip", repo_type="model")
    assert url.repo_id == "tester/roundtrip"

    text = b"hello from the test\n"
    binary = bytes(range(256)) * 64  # NUL bytes -> the server asks for LFS
    (tmp_path / "note.txt").write_bytes(text)
    (tmp_path / "weights.bin").write_bytes(binary)
    api.upload_file(
        path_or_fileobj=str(tmp_path / "note.txt"), path_in_repo="note.txt", repo_id="tester/roundtrip"
    )
    api.upload_file(path_or_fileobj=binary, path_in_repo="sub/weights.bin", repo_id="tester/roundtrip")

    methods = [(r.method, r.path.split("?")[0]) for r in hub_server.requests]
    assert ("POST", "/tester/roundtrip.git/info/lfs/objects/batch") in methods
    assert any(m == "PUT" and p.startswith("/_lfs/") for m, p in methods)

    got_text = hf_hub_download("tester/roundtrip", "note.txt", cache_dir=tmp_path / "c1")
    got_binary = hf_hub_download("tester/roundtrip", "sub/weights.bin", cache_dir=tmp_path / "c1")
    assert open(got_text, "rb").read() == text
    assert open(got_binary, "rb").read() == binary

    info = api.model_info("tester/roundtrip", files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == {".gitattributes", "note.txt", "sub/weights.bin"}
    assert siblings["sub/weights.bin"].lfs is not None and siblings["sub/weights.bin"].size == len(binary)
    assert siblings["note.txt"].lfs is None

    tree = {f.path for f in api.list_repo_tree("tester/roundtrip", recursive=True)}
    assert tree == {".gitattributes", "note.txt", "sub", "sub/weights.bin"}
    # the pushed files are checked out on disk
    assert (hub_server.repo_dir("tester/roundtrip") / "sub" / "weights.bin").read_bytes() == binary

    # the token was sent on writes and never written into the downloaded files
    assert f"Bearer {hub_server.token}" in hub_server.authorizations()
    for path in (tmp_path / "c1").rglob("*"):
        if path.is_file():
            assert hub_server.token.encode() not in path.read_bytes()


def test_errors_map_to_client_exceptions(hub_server):
    """Missing repo, file and revision raise the client's specific errors; writes need the token."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi()
    api.create_repo("tester/errs")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/missing")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("tester/errs", "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("tester/errs", revision="no-such-branch")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").create_repo("tester/other")
    assert err.value.response.status_code == 401


def test_snapshot_download_and_revisions(hub_server, tmp_path):
    """upload_folder + snapshot_download; an older commit stays reachable by its sha."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    api.create_repo("tester/snap", repo_type="dataset")
    folder = tmp_path / "folder"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "x.txt").write_text("one")
    (folder / "y.parquet").write_bytes(b"PAR1 not really")
    first = api.upload_folder(folder_path=folder, repo_id="tester/snap", repo_type="dataset")
    (folder / "a" / "x.txt").write_text("two")
    api.upload_folder(
        folder_path=folder, repo_id="tester/snap", repo_type="dataset", delete_patterns=["*.parquet"]
    )

    latest = snapshot_download("tester/snap", repo_type="dataset", cache_dir=tmp_path / "c")
    assert open(os.path.join(latest, "a", "x.txt")).read() == "two"
    old = snapshot_download("tester/snap", repo_type="dataset", revision=first.oid, cache_dir=tmp_path / "c")
    assert open(os.path.join(old, "a", "x.txt")).read() == "one"
    assert open(os.path.join(old, "y.parquet"), "rb").read() == b"PAR1 not really"
    commits = api.list_repo_commits("tester/snap", repo_type="dataset")
    assert len(commits) == 3  # initial + two uploads


def test_dataset_push_to_hub_and_load_dataset(hub_server, tmp_path):
    """A tiny Dataset with an Image and a ClassLabel survives push_to_hub + load_dataset(repo)."""
    import datasets
    import numpy as np
    from PIL import Image

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["a", "b", "c"]),
            "image": datasets.Image(),
        }
    )
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(3)]
    ds = datasets.Dataset.from_dict(
        {"id": ["x0", "x1", "x2"], "label": [0, 2, 1], "image": images}, features=features
    )
    ds.push_to_hub("tester/tiny", split="train")

    stored = sorted(p.name for p in hub_server.repo_dir("tester/tiny", "dataset").rglob("*.parquet"))
    assert len(stored) == 1
    loaded = datasets.load_dataset("tester/tiny", split="train", cache_dir=str(tmp_path / "dl"))
    assert loaded.features == features
    assert loaded["id"] == ["x0", "x1", "x2"]
    assert loaded["label"] == [0, 2, 1]
    for before, after in zip(images, loaded["image"]):
        assert np.array_equal(np.asarray(before), np.asarray(after))


def test_subprocess_sees_the_server(hub_server):
    """Environment variables carry the endpoint and token into a child process."""
    from huggingface_hub import HfApi

    HfApi().create_repo("tester/child")
    code = "from huggingface_hub import HfApi; print(HfApi().whoami()['name'], HfApi().model_info('tester/child').id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tester", "tester/child"]


def _tiny_segformer():
    import transformers

    config = transformers.SegformerConfig(
        num_encoder_blocks=1,
        depths=[1],
        sr_ratios=[1],
        hidden_sizes=[8],
        num_attention_heads=[1],
        patch_sizes=[3],
        strides=[2],
        mlp_ratios=[1],
        decoder_hidden_size=8,
        num_labels=2,
    )
    return transformers.SegformerForSemanticSegmentation(config)


def test_model_push_to_hub_and_from_pretrained(hub_server, tmp_path):
    """transformers' push_to_hub writes safetensors through LFS; from_pretrained restores the weights."""
    import torch
    import transformers

    model = _tiny_segformer()
    model.push_to_hub("tiny-seg")  # no namespace: goes to the token's user
    assert (hub_server.repo_dir("tester/tiny-seg") / "model.safetensors").is_file()
    loaded = transformers.AutoModelForSemanticSegmentation.from_pretrained(
        "tester/tiny-seg", cache_dir=str(tmp_path / "c")
    )
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_trainer_push_to_hub_checkpoint_strategy(hub_server, tmp_path):
    """Trainer pushes checkpoints (hub_strategy='checkpoint') and the final model; no token in the repo."""
    import torch
    import transformers

    torch.manual_seed(0)
    data = [
        {"pixel_values": torch.randn(3, 16, 16), "labels": torch.randint(0, 2, (16, 16))} for _ in range(4)
    ]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        save_steps=1,
        push_to_hub=True,
        hub_model_id="tester/trained",
        hub_strategy="checkpoint",
        report_to=[],
        use_cpu=True,
    )
    trainer = transformers.Trainer(model=_tiny_segformer(), args=args, train_dataset=data)
    trainer.train()
    trainer.push_to_hub()

    repo = hub_server.repo_dir("tester/trained")
    assert (repo / "model.safetensors").is_file()
    assert (repo / "last-checkpoint" / "trainer_state.json").is_file()
    # Checkpoint pushes run in the background and a save during a running push is skipped, so
    # the pushed checkpoint is step 1 or 2; the final push carries the trained weights.
    assert json.loads((repo / "last-checkpoint" / "trainer_state.json").read_text())["global_step"] in (1, 2)
    pushed = type(trainer.model).from_pretrained(str(repo)).state_dict()
    final = trainer.model.state_dict()
    assert pushed.keys() == final.keys()
    assert all(torch.equal(pushed[k], final[k].cpu()) for k in final)
    for path in repo.rglob("*"):
        if path.is_file():
            assert hub_server.token.encode() not in path.read_bytes(), path
    assert all(r.status < 500 for r in hub_server.requests)


def test_private_repos_and_exist_ok(hub_server):
    """create_repo(exist_ok=True) returns the existing repo; a private repo needs the token to read."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    api = HfApi()
    first = api.create_repo("secret", repo_type="dataset", private=True)
    again = api.create_repo("secret", repo_type="dataset", exist_ok=True)
    assert first.repo_id == again.repo_id == "tester/secret"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("secret", repo_type="dataset")
    assert err.value.response.status_code == 409
    assert api.dataset_info("tester/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info("tester/secret")
    api.update_repo_settings("tester/secret", repo_type="dataset", private=False)
    assert HfApi(token=False).dataset_info("tester/secret").private is False


def test_branches_tags_and_pull_requests(hub_server, tmp_path):
    """Commits to a branch, a tag and a PR stay separate from main and resolve by name."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi()
    api.create_repo("tester/refs")
    api.upload_file(path_or_fileobj=b"main v1", path_in_repo="f.txt", repo_id="tester/refs")
    api.create_branch("tester/refs", branch="dev")
    api.upload_file(path_or_fileobj=b"dev v2", path_in_repo="f.txt", repo_id="tester/refs", revision="dev")
    api.create_tag("tester/refs", tag="v1", revision="main")
    pr = api.upload_file(
        path_or_fileobj=b"pr v3", path_in_repo="f.txt", repo_id="tester/refs", create_pr=True
    )
    assert pr.pr_revision == "refs/pr/1"

    def read(revision: str) -> bytes:
        return open(
            hf_hub_download("tester/refs", "f.txt", revision=revision, cache_dir=tmp_path), "rb"
        ).read()

    assert read("main") == b"main v1"
    assert read("v1") == b"main v1"
    assert read("dev") == b"dev v2"
    assert read("refs/pr/1") == b"pr v3"
    refs = api.list_repo_refs("tester/refs")
    assert {b.name for b in refs.branches} == {"main", "dev"}
    assert [t.name for t in refs.tags] == ["v1"]
    assert (hub_server.repo_dir("tester/refs") / "f.txt").read_bytes() == b"main v1"
