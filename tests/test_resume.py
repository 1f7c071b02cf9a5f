"""A run killed with SIGKILL after a checkpoint resumes and ends like an uninterrupted run."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

from pannuke_hf.training.run import resolve_resume, run
from pannuke_hf.training.schedule import poly_lr

MAX_STEPS = 6
LR = 0.02


def argv(data_dir, out_dir, *extra: str) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--output_dir", str(out_dir),
        "--image_size", "32", "--base_channels", "4", "--num_stages", "2", "--augment", "false",
        "--max_steps", str(MAX_STEPS), "--per_device_train_batch_size", "2", "--learning_rate", str(LR),
        "--logging_steps", "1", "--eval_strategy", "no", "--do_eval", "false",
        "--save_strategy", "steps", "--save_steps", "2",
        "--use_cpu", "true", "--report_to", "none", "--seed", "0", "--torch_num_threads", "1",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


# Runs train.py's code in a child process that stops (sleeps) right after checkpoint-4 is
# written, so the test can SIGKILL it at a known point.
CHILD = textwrap.dedent(
    """
    import sys, time
    from transformers import TrainerCallback
    from pannuke_hf.training.run import run

    class StopAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                print("SAVED", state.global_step, flush=True)
                time.sleep(600)

    run(sys.argv[1:], callbacks=[StopAfterSave()])
    """
)


def wait_for_line(process: subprocess.Popen, prefix: str, timeout: float) -> list[str]:
    """Read ``process``'s stdout until a line starts with ``prefix``; return the lines read.

    The lines are read by a thread, so the wait ends after ``timeout`` seconds even when the
    process prints nothing at all (a blocking ``for line in stdout`` would wait for ever).

    Raises:
        TimeoutError: no such line within ``timeout`` seconds (the last lines are in the message).
        EOFError: the process closed its output first.
    """
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)  # end of output

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(
                f"no line starting with {prefix!r} within {timeout} s; last output:\n" + "".join(seen[-30:])
            ) from None
        if line is None:
            raise EOFError(f"the process closed its output before {prefix!r}:\n" + "".join(seen[-30:]))
        seen.append(line)
        if line.startswith(prefix):
            return seen


def test_waiting_for_a_silent_process_times_out():
    # A child that prints nothing and outlives the wait: the wait must give up on time.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(TimeoutError, match="no line starting with 'SAVED' within 1.0 s"):
            wait_for_line(child, "SAVED", timeout=1.0)
        assert child.poll() is None  # it gave up while the child was still running
    finally:
        child.kill()
        child.wait(timeout=60)


def test_waiting_for_a_process_that_exits_early_says_so():
    child = subprocess.Popen(
        [sys.executable, "-c", "print('starting'); print('crashed')"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with pytest.raises(EOFError, match="closed its output before 'SAVED'"):
            wait_for_line(child, "SAVED", timeout=120.0)
    finally:
        child.wait(timeout=60)
    child = subprocess.Popen(
        [sys.executable, "-c", "print('a'); print('SAVED 4')"], stdout=subprocess.PIPE, text=True
    )
    assert wait_for_line(child, "SAVED", timeout=120.0) == ["a\n", "SAVED 4\n"]
    child.wait(timeout=60)


def _history(out_dir: Path) -> list[dict]:
    return json.loads((out_dir / "trainer_state.json").read_text())["log_history"]


def _losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in history if "loss" in h}


class CrashAfterSave(TrainerCallback):
    """Raise right after checkpoint-4 is written: an in-process stand-in for a crash."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise RuntimeError("simulated crash")


def test_crash_then_resume_ends_at_the_same_step_and_schedule(raw_root, tmp_path):
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(argv(raw_root, out), callbacks=[CrashAfterSave()])
    assert not (out / "model.safetensors").exists()
    run(argv(raw_root, out, "--resume_from_checkpoint", "true"))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    lrs = {h["step"]: h["learning_rate"] for h in state["log_history"] if "learning_rate" in h}
    assert sorted(lrs) == list(range(1, MAX_STEPS + 1))  # steps 1-4 kept, 5-6 trained once
    for step, lr in lrs.items():
        assert lr == pytest.approx(poly_lr(step - 1, LR, MAX_STEPS), rel=1e-9)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(raw_root, tmp_path):
    killed = tmp_path / "killed"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, str(script), *argv(raw_root, killed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        # Times out even if the child hangs without printing anything.
        wait_for_line(child, "SAVED", timeout=600)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (killed / "checkpoint-4").is_dir()
    assert not (killed / "model.safetensors").exists()  # the run really stopped early

    # Resume from the last checkpoint ("latest"), to the same final step.
    assert resolve_resume("latest", str(killed)).endswith("checkpoint-4")
    run(argv(raw_root, killed, "--resume_from_checkpoint", "latest"))
    resumed = _history(killed)
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == MAX_STEPS

    # Same schedule: one LR per step 1..6, the reference formula (LR used by step s is lr(s - 1)).
    lrs = {h["step"]: h["learning_rate"] for h in resumed if "learning_rate" in h}
    assert sorted(lrs) == list(range(1, MAX_STEPS + 1))
    for step, lr in lrs.items():
        assert lr == pytest.approx(poly_lr(step - 1, LR, MAX_STEPS), rel=1e-9)

    # Same trajectory as a run that was never interrupted (model, optimizer, data order restored).
    straight = tmp_path / "straight"
    run(argv(raw_root, straight))
    expected = _losses(_history(straight))
    got = _losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(1, MAX_STEPS + 1))
    for step in range(5, MAX_STEPS + 1):
        assert got[step] == pytest.approx(expected[step], rel=1e-4), step


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_resume("latest", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_resume(str(tmp_path / "checkpoint-9"), str(tmp_path))
