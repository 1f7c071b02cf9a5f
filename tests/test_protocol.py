"""``pannuke-hf protocol``: the 3-fold protocol's rows, and its mean / std over the test folds."""

from __future__ import annotations

import json
import math

import pytest

from pannuke_hf.commands.protocol import main, protocol_table, row_argv, row_scores, summarise_protocol


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
    from pannuke_hf.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(tmp_path), "--load_best_model_at_end", "true"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--split_scheme", "fold1"])
    assert "set by the protocol" in capsys.readouterr().err
    for owned, hint in (("--synthetic_data", "make-synthetic"), ("--instance_metrics", "--nuclei")):
        with pytest.raises(SystemExit):
            main(["--data-dir", str(tmp_path), owned, "true"])
        assert hint in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data-dir", str(tmp_path), "--nuclei", "no", "--nuclei-from", "watershed"])
    # nuclei from the hv head of a model trained without it: refused before any training
    assert cli_main(["protocol", "--data-dir", str(tmp_path), "--nuclei-from", "hv", "--max_steps", "1"]) == 2
    assert "--nuclei-from hv needs the hv instance head" in capsys.readouterr().err
    # a missing data folder: the work failed (1), as for every command
    assert cli_main(["protocol", "--data-dir", str(tmp_path / "missing")]) == 1
    assert "--data-dir" in (err := capsys.readouterr().err) and "missing: no such folder" in err


def test_rows_score_nuclei_by_default_and_read_the_data_dir(tmp_path):
    from pannuke_hf.training.arguments import parse_arguments

    argv = row_argv(["configs/demo.yaml"], str(tmp_path), 2, tmp_path / "row2")
    data_args, _, training_args = parse_arguments(argv)
    assert training_args.instance_metrics is True and training_args.instance_postprocess == "auto"
    # the demo config generates data into --data_dir; the protocol reads --data-dir as it is
    # (a make-synthetic folder made train.py fail with "is not empty and holds no generated data")
    assert data_args.synthetic_data is False and data_args.data_dir == str(tmp_path)
    _, _, training_args = parse_arguments(
        row_argv([], "raw", 1, tmp_path, nuclei=False, nuclei_from="components")
    )
    assert training_args.instance_metrics is False


def test_protocol_table_is_in_percent_with_units_and_names_the_post_processing():
    rows = [
        {"mean_iou": 0.7881, "mean_dice": 0.8, "mPQ": 0.41, "bPQ": 0.6, "F1_detection": 0.75},
        {"mean_iou": 0.7, "mean_dice": 0.8, "mPQ": 0.43, "bPQ": 0.62, "F1_detection": 0.7},
        {"mean_iou": 0.8, "mean_dice": 0.9, "mPQ": 0.45, "bPQ": 0.64, "F1_detection": 0.8},
    ]
    table = protocol_table(summarise_protocol(rows), ["watershed"] * 3)
    header = next(line for line in table.splitlines() if line.startswith("| Row"))
    cells = [cell.strip() for cell in header.strip("|").split("|")][1:]
    assert cells == ["mIoU (%)", "mDice (%)", "mPQ (%)", "bPQ (%)", "F1_d (%)"]
    row1 = next(line for line in table.splitlines() if line.startswith("| row 1"))
    assert "| 78.81 |" in row1 and "0.7881" not in table
    assert "Nuclei from watershed (the semantic map, nuclei split by a distance watershed)" in table
    assert "**mean**" in table and "**std**" in table


def save_fold_checkpoint(folder, scheme, instance_head=None):
    from pannuke_hf.data.splits import training_data_record
    from tests._models import tiny_unet_fcn

    model = tiny_unet_fcn()
    model.config.training_data = training_data_record(scheme)
    if instance_head:
        model.config.instance_head = instance_head
    model.save_pretrained(folder)
    return str(folder)


def test_checkpoints_in_the_wrong_order_are_refused_before_any_data(tmp_path, capsys):
    from pannuke_hf.cli import main as cli_main

    ckpts = [save_fold_checkpoint(tmp_path / f"c{k}", f"fold{k}") for k in (1, 2, 3)]
    data = tmp_path / "no-folds-here"
    data.mkdir()  # had the data been built, this empty folder would fail with exit 1
    swapped = [ckpts[0], ckpts[2], ckpts[1]]  # row 2 tests on fold 3: checkpoint 3's training fold
    argv = ["protocol", "--data-dir", str(data), "--output-dir", str(tmp_path / "out"), "--cpu"]
    assert cli_main([*argv, "--checkpoints", *[ckpts[2], ckpts[1], ckpts[0]]]) == 2
    err = capsys.readouterr().err
    assert "row 1" in err and "fold3" in err and "training patches" in err
    assert cli_main([*argv, "--checkpoints", *swapped]) == 2
    assert "row 2's checkpoint" in (err := capsys.readouterr().err) and "fold3, not fold2" in err
    # nuclei from the hv head of plain models: a usage error, at once
    assert cli_main([*argv, "--nuclei-from", "hv", "--checkpoints", *ckpts]) == 2
    assert "--nuclei-from hv needs a model with the hv instance head" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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
    printed = capsys.readouterr().out
    assert "| mIoU (%) |" in printed and "| mPQ (%) |" in printed  # nuclei by default, in percent
    assert "Nuclei from watershed" in printed  # plain models: the semantic watershed
    assert document["summary"]["mPQ"]["values"] == [row["mPQ"] for row in rows]
    assert [row["nuclei_from"] for row in document["rows"]] == ["watershed"] * 3
    for row in (1, 2, 3):
        config = json.loads((out / f"row{row}" / "config.json").read_text())
        # train.py records the training split: `evaluate` defaults to it and refuses its train split
        assert config["training_data"] == {
            "split_scheme": f"fold{row}",
            "void_label": 0,
            "synthetic_data": False,
        }
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
