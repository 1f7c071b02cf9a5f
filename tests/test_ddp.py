"""Two training processes on the CPU (gloo, via torchrun): really two ranks, an unscaled loss,
and an evaluation identical to the single-process one (no sample scored twice)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import pannuke_hf  # noqa: F401
from pannuke_hf.constants import raw_relpaths
from pannuke_hf.data.synthetic import make_synthetic_folds
from pannuke_hf.models.unet_fcn import UNetFCNConfig, UNetFCNForSemanticSegmentation, UNetFCNImageProcessor
from pannuke_hf.training.evaluation import evaluate_checkpoint
from pannuke_hf.training.run import run
from pannuke_hf.training.trainer import convert_to_sync_batchnorm

# Every rank records what torch.distributed says about it when training starts.
CHILD = textwrap.dedent(
    """
    import json, os, sys
    import torch.distributed as dist
    from transformers import TrainerCallback
    from pannuke_hf.training.run import run

    class Marker(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            rank, world = dist.get_rank(), dist.get_world_size()
            with open(os.path.join(os.environ["MARKER_DIR"], f"rank{rank}.json"), "w") as f:
                json.dump({"rank": rank, "world_size": world, "pid": os.getpid()}, f)

    run(sys.argv[1:], callbacks=[Marker()])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_data(root):
    """Fold 1 (training) = 4 copies of one patch, so every rank sees the same batch whatever the
    sampler does; fold 2 (validation) = 5 distinct patches, an odd count that forces padding."""
    make_synthetic_folds(root, {1: 4, 2: 5, 3: 1}, seed=3)
    paths = {key: root / rel for key, rel in raw_relpaths(1).items()}
    for key in ("images", "masks", "types"):
        array = np.load(paths[key])
        array[:] = array[0]
        np.save(paths[key], array)
    return root


def _tiny_start(path) -> None:
    """A starting checkpoint without dropout, so per-rank losses are deterministic."""
    torch.manual_seed(0)
    config = UNetFCNConfig(base_channels=4, num_stages=2, encoder_num_convs=[2, 2], decoder_num_convs=[2],
                           strides=[1, 1], downsamples=[True], encoder_dilations=[1, 1], decoder_dilations=[1],
                           head_dropout=0.0)  # fmt: skip
    UNetFCNForSemanticSegmentation(config).save_pretrained(path)
    UNetFCNImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def argv(data_dir, start, out_dir) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--model_name_or_path", str(start), "--output_dir", str(out_dir),
        "--split_scheme", "fold1", "--eval_split", "validation",
        "--image_size", "32", "--augment", "false",
        "--max_steps", "2", "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "2",
        "--learning_rate", "0.01", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
        "--use_cpu", "true", "--report_to", "none", "--seed", "0", "--torch_num_threads", "1",
        "--disable_tqdm", "true",
    ]  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path):
    data = _raw_data(tmp_path / "raw")
    _tiny_start(tmp_path / "start")
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ddp_out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MARKER_DIR": str(markers)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(script), *argv(data, tmp_path / "start", ddp_out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Two processes really ran, each seeing a world of 2.
    ranks = [json.loads((markers / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [m["world_size"] for m in ranks] == [2, 2] and ranks[0]["pid"] != ranks[1]["pid"]

    # The loss is not multiplied by the number of processes: each rank trains on the same
    # (identical) example, so the logged mean must equal the single-process loss.
    single_out = tmp_path / "single"
    run(argv(data, tmp_path / "start", single_out))

    def losses(out):
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        return [h["loss"] for h in history if "loss" in h]

    ddp_losses, single_losses = losses(ddp_out), losses(single_out)
    assert len(ddp_losses) == len(single_losses) == 2
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4)

    # Evaluation under 2 processes scored each of the 5 images once, with the exact numbers of a
    # single-process evaluation of the same checkpoint.
    ddp_results = json.loads((ddp_out / "results.json").read_text())
    assert ddp_results["num_images"] == 5
    evaluate_checkpoint(str(ddp_out), data, split="validation", split_scheme="fold1",
                        out_dir=tmp_path / "eval1", batch_size=2, use_cpu=True)  # fmt: skip
    single_results = json.loads((tmp_path / "eval1" / "results.json").read_text())
    assert single_results["num_images"] == 5
    assert ddp_results["per_class"] == single_results["per_class"]
    assert ddp_results["summary"] == single_results["summary"]


def test_sync_bn_conversion():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    keys = set(model.state_dict())
    assert convert_to_sync_batchnorm(model, world_size=1) is model  # one process: unchanged
    converted = convert_to_sync_batchnorm(model, world_size=2, device_type="cuda")
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert set(converted.state_dict()) == keys  # checkpoints stay loadable by the plain model
    with pytest.raises(ValueError, match="sync_bn needs GPU"):
        convert_to_sync_batchnorm(torch.nn.BatchNorm2d(2), world_size=2, device_type="cpu")
