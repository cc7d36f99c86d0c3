"""relpos.experiments.lab_views: the lab sweeps and specs of a kind, progress, the tables, and the
attention row of one image (against hand-written references)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lab_support import TINY_REGIONS, fabricate_lab_sweep, long_rows, transfer_rows
from relpos.experiments import lab_views
from relpos.experiments.lab_report import PAPER_RESULTS
from relpos.experiments.labs import read_results, summarize_results
from relpos.experiments.rundir import update_status
from relpos.experiments.sweep import load_spec


def _s(scheme: str, ev: str, mean: float, std: float | None, n: int = 3, images: int = 512) -> dict:
    return {"scheme": scheme, "eval": ev, "n": n, "mean": mean, "std": std, "min": mean, "max": mean, "images": images}


def test_results_table_by_eval_sorts_grids_and_says_seeds_and_images():
    summary = [_s("2d/bicubic", "grid=12x12", 0.6134, 0.1721), _s("2d/bicubic", "grid=6x6", 0.98, 0.01),
               _s("cpb/log", "grid=6x6", 1.0, 0.0), _s("cpb/log", "grid=12x12", 0.9867, None, n=1),
               _s("cpb/log", "grid=12x12/finetuned", 0.99, 0.001)]
    table = lab_views.results_table(summary, by="eval", train=(4, 4))
    assert table["columns"] == ["grid", "2d/bicubic", "cpb/log"]
    assert table["rows"] == [
        {"grid": "6x6 (1.5×)", "2d/bicubic": "0.980 ± 0.010", "cpb/log": "1.000 ± 0.000"},
        {"grid": "12x12 (3×)", "2d/bicubic": "0.613 ± 0.172", "cpb/log": "0.987 (1 seed)"},
        {"grid": "12x12 (3×), fine-tuned", "2d/bicubic": "–", "cpb/log": "0.990 ± 0.001"},
    ]
    assert table["seeds"] == [1, 3] and table["images"] == [512]
    assert table["caption"] == "Accuracy, mean ± sample std over 1/3 seeds, on 512 images per evaluation."
    with pytest.raises(ValueError, match="by = 'grid'"):
        lab_views.results_table(summary, by="grid")


def test_results_table_by_scheme_keeps_the_given_order():
    summary = [_s("none", "region=seen", 0.4, 0.02), _s("2d", "region=unseen", 0.8, 0.05),
               _s("2d", "region=seen", 0.95, 0.01)]
    table = lab_views.results_table(summary, order=("2d", "absolute"))
    assert table["columns"] == ["scheme", "region=seen", "region=unseen"]
    assert [r["scheme"] for r in table["rows"]] == ["2d", "none"]
    assert table["rows"][1] == {"scheme": "none", "region=seen": "0.400 ± 0.020", "region=unseen": "–"}
    # A tie between seed counts: the larger is the usual one, the cells with fewer say so.
    tie = lab_views.results_table([_s("a", "x", 0.5, 0.1, n=2), _s("b", "x", 0.5, 0.1, n=3)])
    assert [r["x"] for r in tie["rows"]] == ["0.500 ± 0.100 (2 seeds)", "0.500 ± 0.100"]


def test_eval_grid_and_mean_std():
    assert lab_views.eval_grid("grid=8x6/finetuned") == (8, 6, True)
    assert lab_views.eval_grid("grid=8x8") == (8, 8, False) and lab_views.eval_grid("region=seen") is None
    assert lab_views.mean_std({"mean": 0.94749, "std": None}) == "0.947"


def test_paper_rows_are_the_papers_numbers():
    v2 = PAPER_RESULTS["transfer"]
    rows = lab_views.paper_transfer_rows()
    assert [r["window"] for r in rows] == ["8 (trained)", "12", "16", "20", "24"]
    assert [r["ratio"] for r in rows] == ["1×", "1.5×", "2×", "2.5×", "3×"]
    assert rows[0]["cpb/log"] == "81.8" and rows[-1]["2d/bicubic"] == "68.7 / 83.2"
    assert rows[-1]["cpb/linear"] == "%s / %s" % v2["rows"]["cpb/linear"][2][24]
    ablation = lab_views.paper_ablation_rows()
    assert [r["scheme"] for r in ablation] == ["2d", "absolute+2d", "absolute", "none"]
    assert ablation[0] == {"scheme": "2d", "paper's row": "rel. pos.", "ImageNet-1K top-1": 81.3,
                           "COCO AP box": 50.5, "ADE20K mIoU": 46.1}


def test_lab_specs_are_the_shipped_sweeps_of_each_kind():
    names = {kind: [p.name for p in lab_views.lab_specs(kind)] for kind in lab_views.LAB_TITLES}
    assert names["transfer"] == ["transfer.yaml", "transfer_cpb.yaml"]
    assert names["shift"] == ["shift.yaml"]
    assert names["ablation"] == ["ablation.yaml", "ablation_digits.yaml"]
    digits = load_spec(lab_views.lab_specs("ablation")[1])
    assert digits["base"] == "digits" and digits["evaluate"] == {"kind": "ablation"}
    assert digits["grid"]["model.scheme"] == ["none", "absolute", "2d", "absolute+2d"] and digits["seeds"] == [0, 1, 2]
    with pytest.raises(ValueError, match="kind = 'resize'"):
        lab_views.lab_specs("resize")


def test_lab_sweeps_progress_and_train_grid(runs_root):
    rows = transfer_rows({"2d/bicubic": {6: [0.9, 0.8]}, "2d/geometric": {6: [0.9, 0.85]}})
    transfer = fabricate_lab_sweep(runs_root, "transfer", {"kind": "transfer", "grids": [6]}, ["2d", "absolute"],
                                   (0, 1), rows)
    shift = fabricate_lab_sweep(runs_root, "shift", {"kind": "shift"}, ["2d"], (0,), overrides=TINY_REGIONS,
                                stamp="20250102-000000")
    assert [s["dir"] for s in lab_views.lab_sweeps("transfer", runs_root / "sweeps")] == [str(transfer)]
    assert [s["dir"] for s in lab_views.lab_sweeps("shift", runs_root / "sweeps")] == [str(shift)]
    assert lab_views.lab_sweeps("ablation", runs_root / "sweeps") == []
    update_status(runs_root / "transfer-absolute-s1", state="failed")
    update_status(runs_root / "transfer-2d-s1", state="running")
    assert lab_views.lab_progress(transfer) == {"kind": "transfer", "total": 4, "done": 2, "active": 1, "failed": 1,
                                                "evaluated": 2, "to_evaluate": 1}  # absolute s0: done, no rows
    assert lab_views.train_grid(transfer) == (4, 4)  # tiny: 8 px images of 2 px patches
    assert lab_views.lab_evaluate(runs_root) is None  # no sweep.yaml there


def test_transfer_methods_names_each_rule_or_says_why_not(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "transfer", {"kind": "transfer", "grids": [6]},
                                    ["2d", "cpb", "none", "rope_axial"], (0,))
    got = lab_views.transfer_methods(sweep_dir)
    assert got["methods"] == ["bicubic", "geometric", "native", "rescale"]
    rows = {r["scheme"]: r for r in got["rows"]}
    assert [rows["2d"][m][:4] for m in got["methods"]] == ["2d/b", "2d/g", "n/a:", "n/a:"]
    assert rows["cpb"]["native"] == "cpb/log" and rows["none"]["native"] == "none"
    assert rows["rope_axial"]["native"] == "rope_axial/native" and rows["rope_axial"]["rescale"] == "rope_axial/rescale"
    assert rows["none"]["bicubic"].startswith("n/a: the model has no learned table to resize")
    only = fabricate_lab_sweep(runs_root / "b", "t2", {"kind": "transfer", "grids": [6], "methods": ["geometric"]},
                               ["2d", "absolute"], (0,))
    assert lab_views.transfer_methods(only) == {"methods": ["geometric"], "rows": [
        {"scheme": "2d", "geometric": "2d/geometric"},
        {"scheme": "absolute", "geometric": "n/a: the model has no learned table to resize (no relative position "
                                            "bias); it moves by its own rule, method 'native'"}]}


def test_shift_pairs_group_the_done_members_by_seed(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "shift", {"kind": "shift"}, ["2d", "absolute"], (0, 1),
                                    long_rows({"2d": {"region=seen": [0.9, 0.9]}}), overrides=TINY_REGIONS,
                                    checkpoints=True)
    update_status(runs_root / "shift-absolute-s1", state="failed")
    pairs = lab_views.shift_pairs(sweep_dir)
    assert list(pairs) == [0, 1] and set(pairs[0]) == {"2d", "absolute"} and set(pairs[1]) == {"2d"}
    assert pairs[0]["2d"] == str(runs_root / "shift-2d-s0" / "last.pt")
    assert read_results(sweep_dir)[0]["run"] == "shift-2d-s0"


def test_mark_token_and_attention_row():
    assert lab_views.mark_token((5, 3, 1, 14), "A", 4, (4, 4)) == 1 * 4 + 0
    assert lab_views.mark_token((5, 3, 1, 14), "B", 4, (4, 4)) == 0 * 4 + 3
    with pytest.raises(ValueError, match="'C'"):
        lab_views.mark_token((0, 0, 0, 0), "C", 4, (4, 4))
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(1, 3, 1 + 6, 1 + 6), dim=-1)  # (B=1, H=3, N, N): a class token, 2x3 grid
    row = lab_views.attention_row([maps.numpy()], 0, None, 4, (2, 3))
    want = maps[0, :, 1 + 4, 1:].mean(dim=0).reshape(2, 3)  # query patch 4 = (1, 1); keys without the class token
    np.testing.assert_allclose(row, want.numpy(), rtol=1e-6)
    np.testing.assert_allclose(lab_views.attention_row([maps], 0, 2, 0, (2, 3)), maps[0, 2, 1, 1:].reshape(2, 3))
    with pytest.raises(ValueError, match="query = 6"):
        lab_views.attention_row([maps], 0, None, 6, (2, 3))


def test_summary_of_fabricated_results_round_trips(runs_root):
    sweep_dir = fabricate_lab_sweep(runs_root, "ablation", {"kind": "ablation"}, ["2d", "none"], (0, 1),
                                    long_rows({"2d": {"val/relational": [1.0, 0.99]},
                                               "none": {"val/relational": [0.36, 0.38]}}))
    summary = summarize_results(read_results(sweep_dir))
    table = lab_views.results_table(summary)
    assert table["rows"] == [{"scheme": "2d", "val/relational": "0.995 ± 0.007"},
                             {"scheme": "none", "val/relational": "0.370 ± 0.014"}]
