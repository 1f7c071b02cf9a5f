"""The reference optimizer and poly LR schedule, built from each published configuration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pannuke_hf.training.arguments import parse_arguments
from pannuke_hf.training.schedule import PolyLRScheduler, build_sgd, poly_lr
from pannuke_hf.training.trainer import PanNukeTrainer

CONFIGS = sorted(
    (Path(__file__).resolve().parents[1] / "configs").glob("fcn-unet-s5-d16_1xb16-*-20k_pannuke-512x512.yaml")
)


#: lr(t) = (lr0 - 1e-4) * (1 - t/19999)^0.9 + 1e-4 (mmengine's PolyLR(eta_min=1e-4, power=0.9, begin=0,
#: end=20000) divides by end - begin - 1), evaluated independently with mpmath at 30 digits and
#: written here as literals. Step 20000 (past the end) stays at the floor.
REFERENCE_LRS: dict[float, dict[int, float]] = {
    0.01: {
        0: 0.01,
        1: 0.0099995544766100044,
        440: 0.0098037527949625822,
        10000: 0.0054050398894814829,
        19998: 0.00010133268571401455,
        19999: 0.0001,
        20000: 0.0001,
    },
    0.001: {
        0: 0.001,
        1: 0.00099995949787363676,
        440: 0.00098215934499659838,
        10000: 0.00058227635358922572,
        19998: 0.0001001211532467286,
        19999: 0.0001,
        20000: 0.0001,
    },
    0.0001: dict.fromkeys((0, 1, 440, 10000, 19998, 19999, 20000), 0.0001),
}


def test_three_reference_configs_exist():
    lrs = sorted(parse_arguments([str(c), "--output_dir", "x"])[2].learning_rate for c in CONFIGS)
    assert lrs == [0.0001, 0.001, 0.01]


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`:UserWarning")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_reference_optimizer_and_schedule(config, tmp_path):
    # The flag overrides the file (no eval dataset in this unit test).
    data_args, model_args, args = parse_arguments(
        [str(config), "--output_dir", str(tmp_path), "--eval_strategy", "no"]
    )
    assert args.eval_strategy == "no"
    assert (args.max_steps, args.per_device_train_batch_size) == (20000, 16)
    assert (args.eval_steps, args.save_steps, args.save_strategy) == (2000, 2000, "steps")
    assert (data_args.image_size, data_args.split_scheme, data_args.augment) == (512, "reference", True)
    assert (model_args.base_channels, model_args.num_stages) == (64, 5)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    trainer = PanNukeTrainer(model=model, args=args)
    optimizer = trainer.create_optimizer()
    scheduler = trainer.create_scheduler(args.max_steps, optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    (group,) = optimizer.param_groups
    assert group["momentum"] == 0.9 and group["weight_decay"] == 0.0005
    # Weight decay on every parameter, BatchNorm and bias included, as the reference.
    assert sum(p.numel() for p in group["params"]) == sum(p.numel() for p in model.parameters())

    expected = REFERENCE_LRS[args.learning_rate]
    seen = {}
    for step in range(20001):
        if step in expected:
            seen[step] = optimizer.param_groups[0]["lr"]
        scheduler.step()  # (no optimizer.step(): only the LR matters here; keeps the test fast)
    for step, lr in seen.items():
        assert math.isclose(lr, expected[step], rel_tol=1e-12), (step, lr, expected[step])
    # The last iteration (t = 19999) runs at exactly the floor.
    assert seen[19999] == pytest.approx(1e-4, rel=1e-15, abs=0)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_reference_configs_do_not_clip_gradients(config, tmp_path):
    """The reference trains with clip_grad=None; Trainer clips only when max_grad_norm > 0."""
    args = parse_arguments([str(config), "--output_dir", str(tmp_path)])[2]
    assert args.max_grad_norm == 0, args.max_grad_norm


def test_poly_lr_function_matches_reference_literals():
    for lr0, values in REFERENCE_LRS.items():
        for step, lr in values.items():
            assert math.isclose(poly_lr(step, lr0, 20000), lr, rel_tol=1e-12), (lr0, step)
    assert poly_lr(0, 0.05, 1) == 0.05  # a one-step run trains at lr0 (nothing to divide by)


def test_floor_equal_to_lr0_is_flat():
    model = torch.nn.Linear(2, 2)
    optimizer = build_sgd(model.parameters(), lr=1e-4)
    scheduler = PolyLRScheduler(optimizer, total_steps=10, min_lr=1e-4)
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == [pytest.approx(1e-4, rel=1e-12)] * 12


def test_scheduler_state_round_trip_continues_the_curve():
    model = torch.nn.Linear(2, 2)
    optimizer = build_sgd(model.parameters(), lr=0.01)
    scheduler = PolyLRScheduler(optimizer, total_steps=100)
    for _ in range(37):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    fresh_opt = build_sgd(model.parameters(), lr=0.01)
    fresh = PolyLRScheduler(fresh_opt, total_steps=5, min_lr=0.5)  # wrong constants, overwritten by the state
    fresh.load_state_dict(state)
    fresh_opt.step()
    fresh.step()
    assert math.isclose(fresh_opt.param_groups[0]["lr"], poly_lr(38, 0.01, 100), rel_tol=1e-12)


def test_poly_lr_rejects_bad_total():
    with pytest.raises(ValueError, match="total_steps"):
        poly_lr(0, 0.01, 0)
