"""The labs: each scheme's transfer rule against a written-out reference, the shift evaluation,
results.csv, the summary math, the words, and a tiny lab sweep end to end."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

from relpos.experiments import labs, sweep
from relpos.experiments.checkpoint import save_checkpoint
from relpos.experiments.config import apply_overrides, build_model, resolve_config
from relpos.experiments.config_utils import load_config, save_config
from relpos.experiments.lab_report import PAPER_RESULTS, conclusion, paper_markdown
from relpos.experiments.labs import (
    RESULTS_COLUMNS,
    check_evaluate,
    read_results,
    results_markdown,
    summarize_results,
    write_results,
)
from relpos.experiments.resize_lab import resize_lab
from relpos.experiments.rundir import update_status
from relpos.experiments.shift import default_regions, evaluate_shift, shift_example
from relpos.experiments.transfer import (
    TRANSFER_METHODS,
    evaluate_transfer,
    methods_for,
    not_applicable_reason,
    scheme_label,
    transfer_model,
)
from relpos.families import SCHEMES
from relpos.rotary import RotaryPositionEmbedding
from test_resize import beit_geometric_reference, bicubic_1d_reference, timm_resize_rel_pos_bias_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny_cfg(*overrides: str) -> dict:
    return resolve_config(apply_overrides(load_config(TINY), list(overrides)))


def tiny_model(*overrides: str):
    torch.manual_seed(0)
    return build_model(tiny_cfg(*overrides)).eval()


def saved(tmp_path: Path, *overrides: str, name: str = "ckpt.pt") -> str:
    cfg = tiny_cfg(*overrides)
    torch.manual_seed(0)
    path = tmp_path / name
    save_checkpoint(build_model(cfg), None, 1, {}, path, config=cfg)
    return str(path)


# ----------------------------------------------------------------------------- each scheme's rule


@pytest.mark.parametrize("coords", ["log", "linear"])
def test_cpb_is_requeried_with_the_training_window_held(coords):
    """Swin V2: offsets of the new window divided by (training window - 1); log: *8, log2(|x|+1)/log2(8)."""
    model = tiny_model("model.scheme=cpb", f"model.rpb.cpb_coords={coords}")  # trained at 4x4
    transfer_model(model, 6, "native")
    rpb = model.blocks[0].attn.relative_position_bias
    assert rpb.window_size == (6, 6) and rpb.pretrained_window_size == (4, 4)
    for dy in range(-5, 6):
        for dx in range(-5, 6):
            want = []
            for d in (dy, dx):
                x = d / 3  # (training window 4) - 1
                want.append(math.copysign(math.log2(abs(8 * x) + 1) / 3, x) if coords == "log" else x)
            got = rpb.relative_coords_table[dy + 5, dx + 5].tolist()
            assert got == pytest.approx(want, abs=1e-6), (dy, dx)
    # the bias of a query/key pair is the MLP of its offset's coordinates: query (5, 5), key (1, 3)
    bias = rpb().detach()  # (H, 36, 36)
    coord = rpb.relative_coords_table[4 + 5, 2 + 5]
    mlp = rpb.cpb_mlp
    hidden = torch.relu(coord @ mlp[0].weight.T + mlp[0].bias)
    want = 16 * torch.sigmoid(hidden @ mlp[2].weight.T)  # (H,)
    torch.testing.assert_close(bias[:, 5 * 6 + 5, 1 * 6 + 3], want.detach())


def test_cpb_held_window_differs_from_renormalizing():
    held, renorm = tiny_model("model.scheme=cpb"), tiny_model("model.scheme=cpb")
    transfer_model(held, 8, "native")
    renorm.set_window_size((8, 8))  # the module alone renormalizes by the new window
    assert not torch.allclose(held.blocks[0].attn.relative_position_bias.relative_coords_table,
                              renorm.blocks[0].attn.relative_position_bias.relative_coords_table)


def test_absolute_embedding_matches_a_hand_bicubic_resample():
    model = tiny_model("model.scheme=absolute")
    pe = model.pos_embed.detach().clone().view(4, 4, -1)  # (gh, gw, C)
    transfer_model(model, 6, "native")
    got = model.pos_embed.detach().view(6, 6, -1)
    for c in (0, 5, pe.shape[-1] - 1):  # separable: rows, then columns, with torch's Keys kernel
        rows = [bicubic_1d_reference(pe[y, :, c].tolist(), 6) for y in range(4)]  # (4, 6)
        want = [bicubic_1d_reference([rows[y][x] for y in range(4)], 6) for x in range(6)]  # (x, y)
        torch.testing.assert_close(got[:, :, c], torch.tensor(want).T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["bicubic", "geometric"])
def test_tables_follow_the_resize_references(method):
    model = tiny_model()  # 2d table, 4x4 grid, 2 heads
    table = model.blocks[0].attn.relative_position_bias.relative_position_bias_table.detach().clone()
    transfer_model(model, 6, method)
    got = model.blocks[0].attn.relative_position_bias.relative_position_bias_table.detach()
    if method == "bicubic":
        want = timm_resize_rel_pos_bias_table(table, (6, 6), (121, 2))
    else:
        want = beit_geometric_reference(table, 7, 11).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_t5_alibi_recomputed_and_none_untouched():
    alibi = tiny_model("model.scheme=alibi")
    transfer_model(alibi, 6, "native")
    fresh = tiny_model("model.scheme=alibi", "data.img_size=12")
    torch.testing.assert_close(alibi.blocks[0].attn.relative_position_bias(),
                               fresh.blocks[0].attn.relative_position_bias())
    t5 = tiny_model("model.scheme=t5")
    table = t5.blocks[0].attn.relative_position_bias.relative_position_bias_table.detach().clone()
    transfer_model(t5, 6, "native")
    rpb = t5.blocks[0].attn.relative_position_bias
    assert torch.equal(rpb.relative_position_bias_table.detach(), table) and rpb.seq_len == 36
    none = tiny_model("model.scheme=none")
    before = copy.deepcopy(none.state_dict())
    notes = transfer_model(none, 6, "native")
    assert all(torch.equal(before[k], v) for k, v in none.state_dict().items())
    assert none(torch.zeros(1, 3, 12, 12)).shape == (1, 4) and "nothing to move" in notes[-1]


def test_rotary_modules_are_moved_generically():
    model = tiny_model("model.scheme=none")
    model.rope = RotaryPositionEmbedding(8, (4, 4))  # the ViT holds no rotary yet: any set_grid_size module
    assert methods_for(model) == ("native", "rescale")
    plain, eva = copy.deepcopy(model), copy.deepcopy(model)
    transfer_model(plain, 6, "native")
    transfer_model(eva, 6, "rescale")
    assert plain.rope.grid_size == (6, 6) and not plain.rope.rescaled
    assert eva.rope.rescaled and eva.rope.coordinate_steps() == pytest.approx((4 / 6, 4 / 6))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_methods_for_offers_only_methods_that_apply(scheme):
    overrides = [f"model.scheme={scheme}"]
    if scheme.endswith(("1d", "t5")):  # 1D families may carry a class token: move it along
        overrides.append("model.class_token=true")
    model = tiny_model(*overrides)
    offered = methods_for(model)
    assert offered and set(offered) <= set(TRANSFER_METHODS)
    for method in TRANSFER_METHODS:
        if method in offered:
            assert not_applicable_reason(model, method) is None
            transfer_model(copy.deepcopy(model), 6, method)
        else:
            assert not_applicable_reason(model, method).startswith("not applicable")
            with pytest.raises(ValueError, match=method):
                transfer_model(copy.deepcopy(model), 6, method)
    states = []
    for method in offered:  # distinct methods give distinct models (never one number under two names)
        moved = copy.deepcopy(model)
        transfer_model(moved, 6, method)
        assert moved(torch.randn(2, 3, 12, 12)).shape == (2, 4)
        states.append([*moved.parameters(), *moved.buffers()])  # buffers: rotary coordinates too
    for i, a in enumerate(states):
        for b in states[i + 1:]:
            assert any(x.shape != y.shape or not torch.equal(x, y) for x, y in zip(a, b))
    labels = {scheme_label(model, scheme, m) for m in offered}
    assert len(labels) == len(offered)


def test_scheme_labels():
    assert scheme_label(tiny_model(), "2d", "geometric") == "2d/geometric"
    assert scheme_label(tiny_model("model.scheme=cpb"), "cpb", "native") == "cpb/log"
    lin = tiny_model("model.scheme=cpb", "model.rpb.cpb_coords=linear")
    assert scheme_label(lin, "cpb", "native") == "cpb/linear"
    assert scheme_label(tiny_model("model.scheme=absolute"), "absolute", "native") == "absolute"


# ----------------------------------------------------------------------------- checkpoints


def test_evaluate_transfer_rows(tmp_path):
    path = saved(tmp_path, "model.scheme=cpb")
    rows = evaluate_transfer(path, [6, 8], methods=["bicubic", "native"], num_samples=16, finetune_steps=1)
    evals = [(r["scheme"], r["method"], r["eval"]) for r in rows]
    assert evals == [(s, m, f"grid={g}x{g}{t}") for g in (6, 8) for s, m, t in
                     [("cpb", "bicubic", ""), ("cpb/log", "native", ""), ("cpb/log", "native", "/finetuned")]]
    na = rows[0]
    assert na["accuracy"] is None and na["n"] == 0 and "not applicable" in na["note"]
    assert all(0 <= r["accuracy"] <= 1 and r["n"] == 16 for r in rows if r["method"] == "native")
    with pytest.raises(ValueError, match="not square"):
        evaluate_transfer(path, [(6, 8)])
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate_transfer(path, [6], methods=["area"])


def test_resize_lab_is_the_single_checkpoint_view(tmp_path):
    lab = resize_lab(saved(tmp_path, "model.scheme=absolute"), 12, max_samples=16)
    assert [r["model"] for r in lab["accuracy"]] == ["original", "native"] and lab["tables"] == {}
    assert lab["methods"] == ("native",) and lab["bias_type"] is None
    cpb = resize_lab(saved(tmp_path, "model.scheme=cpb", name="c.pt"), 12, methods=("bicubic", "native"),
                     max_samples=16)
    assert [r["model"] for r in cpb["accuracy"]] == ["original", "native", "native, bias off"]
    assert cpb["notes"]["bicubic"][0].startswith("not applicable")
    assert set(cpb["tables"]) == {"original", "native"}


def test_evaluate_shift_and_its_example(tmp_path):
    path = saved(tmp_path, "data.train_region=[0, 6]", "data.val_region=[2, 8]")
    rows = evaluate_shift(path, num_samples=8)
    assert [r["eval"] for r in rows] == ["region=seen", "region=unseen"]
    assert rows[1]["region"] == {"cols": [2, 8], "rows": [0, 8]} and all(r["n"] == 8 for r in rows)
    assert rows[0]["scheme"] == "2d"
    custom = evaluate_shift(path, {"left": [0, 4], "all": None}, num_samples=4)
    assert [r["eval"] for r in custom] == ["region=left", "region=all"] and custom[1]["region"] is None
    ex = shift_example(path, index=3)
    assert ex["image"].shape == (3, 8, 8) and len(ex["attention"]) == 1
    assert ex["attention"][0].shape == (1, 2, 16, 16) and 2 <= min(ex["marks"][1], ex["marks"][3])
    with pytest.raises(ValueError, match="the same"):
        evaluate_shift(saved(tmp_path, name="plain.pt"))
    with pytest.raises(ValueError, match=r"data\.val_region"):
        evaluate_shift(path, {"bad": [0, 2]})


def test_default_regions_need_the_relational_dataset():
    with pytest.raises(ValueError, match="relational"):
        default_regions(resolve_config({"data": {"dataset": "digits"}}))


# ----------------------------------------------------------------------------- results as data


def test_results_csv_round_trip(tmp_path):
    rows = [{"run": "a", "scheme": "2d/bicubic", "seed": 0, "eval": "grid=8x8", "accuracy": 0.9375, "n": 512},
            {"run": "b", "scheme": "cpb/log", "seed": 1, "eval": "grid=8x8", "accuracy": 1 / 3, "n": 512}]
    path = write_results(tmp_path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == "run,scheme,seed,eval,accuracy,n" == ",".join(RESULTS_COLUMNS)
    assert lines[1] == "a,2d/bicubic,0,grid=8x8,0.9375,512" and lines[2] == "b,cpb/log,1,grid=8x8,0.333333,512"
    back = read_results(tmp_path)
    assert back[0] == rows[0] and back[1]["accuracy"] == pytest.approx(0.333333)
    assert read_results(tmp_path / "nothing") == []
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("run,acc\n")
    with pytest.raises(ValueError, match="columns"):
        read_results(tmp_path / "bad")


def test_ablation_reads_the_members_best_validation_accuracy(tmp_path):
    run = tmp_path / "ablation-absolute-s1"
    run.mkdir()
    save_config(tiny_cfg("model.scheme=absolute", "seed=1"), run / "config.yaml")
    update_status(run, state="done", best_accuracy=0.8125)
    assert labs.evaluate_member(run, {"kind": "ablation"}, seed=1) == [
        {"run": "ablation-absolute-s1", "seed": 1, "scheme": "absolute", "eval": "val/relational",
         "accuracy": 0.8125, "n": 64}]


def test_summarize_math():
    rows = [{"scheme": "2d", "eval": "region=seen", "accuracy": a, "n": 100} for a in (0.5, 0.7, 0.9)]
    rows += [{"scheme": "cpb", "eval": "region=seen", "accuracy": 0.25, "n": 64},
             {"scheme": "cpb", "eval": "region=seen", "accuracy": None, "n": 0}]
    two, one = summarize_results(rows)
    assert (two["scheme"], two["n"], two["images"]) == ("2d", 3, 100)
    assert two["mean"] == pytest.approx(0.7) and two["std"] == pytest.approx(0.2)  # sample std, n - 1
    assert (two["min"], two["max"]) == (0.5, 0.9)
    assert one["n"] == 1 and one["std"] is None and one["mean"] == 0.25
    md = results_markdown([two, one], title="T")
    assert "| 2d | 0.700 ± 0.200 |" in md and "| cpb | 0.250 |" in md


def test_check_evaluate():
    assert check_evaluate(None) is None
    t = check_evaluate({"kind": "transfer", "grids": [6, 8]})
    assert t == {"kind": "transfer", "grids": [6, 8], "methods": None, "finetune_steps": 0, "num_samples": 512,
                 "checkpoint": "last"}
    assert check_evaluate({"kind": "ablation"}) == {"kind": "ablation"}
    for bad, key in [({"kind": "x"}, "kind"), ({"kind": "transfer"}, "grids"),
                     ({"kind": "transfer", "grids": [6], "methods": ["area"]}, "methods"),
                     ({"kind": "shift", "grids": [6]}, "grids"),
                     ({"kind": "shift", "checkpoint": "x"}, "checkpoint"),
                     ({"kind": "transfer", "grids": [0]}, "grids"),
                     ({"kind": "shift", "regions": [0, 5]}, "regions")]:
        with pytest.raises(ValueError, match=f"s.yaml: .*{key}"):
            check_evaluate(bad, source="s.yaml")


def _summary(means: dict, ev: str, std: float = 0.01) -> list[dict]:
    return [{"scheme": s, "eval": ev, "n": 3, "mean": m, "std": std, "min": m, "max": m, "images": 512}
            for s, m in means.items()]


def test_conclusions_follow_the_numbers():
    means = {"cpb/log": 0.99, "cpb/linear": 0.95, "2d/bicubic": 0.6}
    same = conclusion("transfer", _summary(means, "grid=12x12") + _summary({"2d/bicubic": 0.9}, "grid=8x8"))
    assert same.startswith("At 12x12 without fine-tuning (3 seeds)") and "Same ordering as the paper" in same
    against = conclusion("transfer", _summary({"cpb/log": 0.7, "2d/bicubic": 0.9}, "grid=12x12"))
    assert "Contradicts the paper: here 2d/bicubic ahead of cpb/log (0.900 vs 0.700)" in against
    close = conclusion("transfer", _summary({"cpb/log": 0.90, "cpb/linear": 0.91}, "grid=12x12", std=0.05))
    assert "Too close to call" in close
    assert "Same ordering" not in close and "do not contradict it" in close  # means reversed, within noise
    seen = _summary({"2d": 0.95, "absolute": 0.99}, "region=seen")
    shift = seen + _summary({"2d": 0.8, "absolute": 0.5}, "region=unseen")
    assert "As expected" in conclusion("shift", shift)
    flipped = seen + _summary({"2d": 0.5, "absolute": 0.8}, "region=unseen")
    assert "Unexpected: absolute" in conclusion("shift", flipped)
    abl = conclusion("ablation", _summary({"2d": 1.0, "absolute": 0.98, "none": 0.36}, "val/relational"))
    assert "Relative best and no position worst, as in the paper" in abl and "Same ordering" in abl
    abl = conclusion("ablation", _summary({"absolute": 1.0, "2d": 0.9, "none": 0.36}, "val/digits"))
    assert "Not the paper's shape" in abl
    with pytest.raises(ValueError, match="kind"):
        conclusion("other", [])


def test_paper_numbers_are_kept_as_data():
    v2 = PAPER_RESULTS["transfer"]["rows"]
    assert v2["2d/bicubic"][1] == 81.7 and v2["2d/bicubic"][2][24] == (68.7, 83.2)
    assert v2["cpb/log"][2][24][0] == 79.1 and v2["cpb/linear"][2][24][0] == 77.6
    assert PAPER_RESULTS["ablation"]["rows"]["none"][1][0] == 80.1
    assert "CVPR 2022, Table 1" in paper_markdown("transfer") and "Table 4" in paper_markdown("ablation")
    assert paper_markdown("shift") == ""


# ----------------------------------------------------------------------------- a tiny lab sweep


@pytest.mark.slow
def test_tiny_transfer_sweep_end_to_end(tmp_path, runs_root, monkeypatch):
    spec_path = tmp_path / "lab.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "lab", "base": "tiny", "grid": {"model.scheme": ["2d", "absolute"]}, "seeds": 1,
        "set": {"train.epochs": 1}, "evaluate": {"kind": "transfer", "grids": [6], "num_samples": 16},
    }))
    out = tmp_path / "sweep"
    assert sweep.main(["--spec", str(spec_path), "--sweep-dir", str(out), "--runs-root", str(runs_root)]) == 0
    rows = read_results(out)
    assert sorted((r["scheme"], r["eval"], r["n"]) for r in rows) == [
        ("2d/bicubic", "grid=6x6", 16), ("2d/geometric", "grid=6x6", 16), ("absolute", "grid=6x6", 16)]
    assert {r["seed"] for r in rows} == {0} and "**Conclusion.**" in (out / "results.md").read_text()
    # a re-run evaluates only members without results
    calls = []
    monkeypatch.setattr(labs, "evaluate_member", lambda *a, **k: calls.append(a) or [])
    assert sweep.main(["--spec", str(spec_path), "--sweep-dir", str(out), "--runs-root", str(runs_root)]) == 0
    assert calls == [] and read_results(out) == rows
