"""``pannuke-hf protocol``: the 3-fold protocol's rows, and its mean / std over the test folds."""

from __future__ import annotations

import json
import math

import pytest

from pannuke_hf.commands.protocol import main, row_argv, row_scores, summarise_protocol


def test_summary_is_mean_and_population_std_over_the_three_test_folds():
    rows = [
        row_scores({"eval_mean_iou": 0.5, "eval_mPQ": 0.40, "eval_bPQ": 0.6, "epoch": 1.0, "eval_name": "x"}),
        row_scores({"eval_mean_iou": 0.6, "eval_mPQ": 0.45, "eval_bPQ": 0.7, "epoch": 1.0}),
        row_scores({"eval_mean_iou": 0.7, "eval_mPQ": 0.50}),
    ]
    summary = summarise_protocol(rows)
    assert summary["mean_iou"]["values"] == [0.5, 0.6, 0.7]
    assert summary["mean_iou"]["mean"] == pytest.approx(0.6)
    assert summary["mean_iou"]["std"] == pytest.approx(math.sqrt((0.01 + 0 + 0.01) / 3))
    assert summary["mPQ"]["mean"] == pytest.approx(0.45)
    assert "bPQ" not in summary  # missing from row 3: not summarised
    assert "mean_dice" not in summary
    with pytest.raises(ValueError, match="3 rows"):
        summarise_protocol(rows[:2])


def test_rows_are_the_official_train_validation_test_folds():
    from pannuke_hf.constants import FOLD_PROTOCOL
    from pannuke_hf.data.splits import fold_split_names

    assert FOLD_PROTOCOL == ((1, 2, 3), (2, 1, 3), (3, 2, 1))
    for row, (train, validation, test) in enumerate(FOLD_PROTOCOL, start=1):
        argv = row_argv(["cfg.yaml", "--max_steps", "3"], "raw", row, "out")
        assert argv[:3] == ["cfg.yaml", "--max_steps", "3"]  # the config file stays first
        scheme = argv[argv.index("--split_scheme") + 1]
        assert fold_split_names(scheme) == {
            "train": f"fold{train}",
            "validation": f"fold{validation}",
            "test": f"fold{test}",
        }
        assert argv[argv.index("--eval_split") + 1] == "test"


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(tmp_path), "--load_best_model_at_end", "true"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--split_scheme", "fold1"])
    assert "set by the protocol" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_protocol_trains_three_rows_and_scores_checkpoints(raw_root, tmp_path, capsys):
    import torch

    torch.set_num_threads(1)
    tiny = [
        "--image_size", "32", "--base_channels", "4", "--num_stages", "2", "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
        "--eval_strategy", "no", "--save_strategy", "no", "--use_cpu", "true", "--report_to", "none",
        "--torch_num_threads", "1", "--dataset_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    out = tmp_path / "protocol"
    assert main(["--data-dir", str(raw_root), "--output-dir", str(out), *tiny]) == 0
    document = json.loads((out / "protocol.json").read_text())
    rows = [row["scores"] for row in document["rows"]]
    # Rows 1 and 2 test on fold 3 (5 patches), row 3 on fold 1 (6 patches).
    assert [row["num_images"] for row in rows] == [5, 5, 6]
    values = [row["mean_iou"] for row in rows]
    assert document["summary"]["mean_iou"]["values"] == values
    assert document["summary"]["mean_iou"]["mean"] == pytest.approx(sum(values) / 3)
    assert "| mean_iou |" in capsys.readouterr().out
    for row in (1, 2, 3):
        assert (out / f"row{row}" / "config.json").is_file()
        assert json.loads((out / f"row{row}" / "results.json").read_text())["split"] == "test"

    # The same three checkpoints scored by --checkpoints give the same numbers.
    again = tmp_path / "again"
    checkpoints = [str(out / f"row{row}") for row in (1, 2, 3)]
    assert main(["--data-dir", str(raw_root), "--output-dir", str(again), "--checkpoints", *checkpoints,
                 "--cpu", "--batch-size", "4", "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    rescored = json.loads((again / "protocol.json").read_text())
    for key in ("mean_iou", "mean_dice"):
        assert rescored["summary"][key]["values"] == pytest.approx(
            document["summary"][key]["values"], abs=1e-6
        )
