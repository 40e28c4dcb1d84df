"""Segmentation: the ADE20K-layout folder (and its clear errors), mIoU with paired intervals, and
``mimkit finetune --task segmentation`` end to end on a few images."""
import json

import pytest
import torch

import mimkit
from mimkit.cli import main as cli
from mimkit.data.segmentation import SegmentationFolderError, read_segmentation_folder, write_segmentation_folder
from mimkit.eval.segment import iou_counts, miou_from_confusion
from mimkit.eval.stats import miou_interval, paired_miou_difference


def scenes(n=8, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
        k = 1 + i % 2
        x[i, 0, r:r + 10, c:c + 10] = 120 * k
        y[i, r:r + 10, c:c + 10] = k
    return x, y


def test_folder_round_trip_and_clear_errors(tmp_path):
    x, y = scenes()
    write_segmentation_folder(tmp_path, "training", x, y)
    xr, yr = read_segmentation_folder(tmp_path, "training", in_chans=1)
    assert torch.equal(xr, x) and torch.equal(yr, y)
    with pytest.raises(SegmentationFolderError, match="--num-labels 3"):
        read_segmentation_folder(tmp_path, "training", in_chans=1, num_labels=2)
    with pytest.raises(SegmentationFolderError, match="images/validation"):
        read_segmentation_folder(tmp_path, "validation", in_chans=1)
    (tmp_path / "annotations" / "training" / "000003.png").unlink()
    with pytest.raises(SegmentationFolderError, match="000003.png has no label map"):
        read_segmentation_folder(tmp_path, "training", in_chans=1)
    from PIL import Image

    Image.new("L", (20, 20)).save(tmp_path / "annotations" / "training" / "000003.png")
    with pytest.raises(SegmentationFolderError, match="must match their images"):
        read_segmentation_folder(tmp_path, "training", in_chans=1)


def test_iou_counts_and_intervals():
    truth = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [0, 0]]])
    pred = torch.tensor([[[0, 1], [1, 2]], [[1, 0], [0, 0]]])
    inter, union = iou_counts(pred, truth, 3)
    # image 0: class 0 1/1, class 1 1/2 (pred has an extra 1), class 2 0/1 (the 255 pixel ignored)
    assert inter[0].tolist() == [1, 1, 0] and union[0].tolist() == [1, 2, 1]
    assert inter[1].tolist() == [2, 1, 0] and union[1].tolist() == [3, 2, 0]
    conf = torch.zeros(3, 3, dtype=torch.long)
    for t, p in zip(truth.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            conf[t, p] += 1
    assert miou_interval(inter, union, resamples=50)["miou"] == pytest.approx(miou_from_confusion(conf))
    same = paired_miou_difference(inter, union, inter, union, resamples=50)
    assert same["diff"] == 0 and same["verdict"] == "tie"
    n = 40
    good_i, good_u = torch.tensor([[5, 5]] * n), torch.tensor([[5, 5]] * n)
    bad_i = torch.tensor([[3, 2]] * n)
    d = paired_miou_difference(good_i, good_u, bad_i, good_u, resamples=100)
    assert d["diff"] == pytest.approx(0.5) and d["verdict"] == "better"


def test_cli_segmentation_end_to_end(tmp_path, capsys):
    x, y = scenes(24)
    write_segmentation_folder(tmp_path / "data", "training", x[:16], y[:16])
    write_segmentation_folder(tmp_path / "data", "validation", x[16:], y[16:])
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                          decoder_depth=1, decoder_num_heads=2)
    mimkit.save(model, tmp_path / "m")
    out = tmp_path / "res" / "seg.json"
    assert cli(["finetune", "--task", "segmentation", "--checkpoint", str(tmp_path / "m"), "--data",
                str(tmp_path / "data"), "--minutes", "0.05", "--batch-size", "4", "--head-channels", "16",
                "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["num_labels"] == 3 and res["results"]["steps"] > 0 and 0 <= res["results"]["test_miou"] <= 1
    assert (tmp_path / "res" / "segmentation.png").is_file()
    assert "test mIoU" in capsys.readouterr().out
    assert cli(["finetune", "--task", "segmentation", "--data", str(tmp_path / "data")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_tune_segmentation_scores_trials_on_validation_and_resumes(monkeypatch):
    """One trial per base lr, trained on the fit images and scored on the validation images (handed in the
    test set's place, so no test image is read); the best is chosen; kept trials are not run again."""
    from mimkit.eval import segment

    x, y = scenes(12)
    fit, val = (x[:8], y[:8]), (x[8:], y[8:])
    calls = []

    def fake(backbone, train, during, scored, num_labels, *, minutes, blr, **kw):
        calls.append((train, during, scored, minutes, blr, kw))
        return {"test_miou": 0.3 + (blr == 4e-3) * 0.1, "steps": 5, "minutes": minutes}

    monkeypatch.setattr(segment, "finetune_segmentation", fake)
    got = segment.tune_segmentation("bb", fit, val, 3, minutes=0.2, layer_decay=0.9, seed=1)
    assert [c[4] for c in calls] == list(segment.SEGMENTATION_BLRS)
    assert all(c[0] is fit and c[1] is None and c[2] is val and c[3] == 0.2 and c[5]["layer_decay"] == 0.9
               for c in calls)
    assert got["chosen"] == {"blr": 4e-3, "val_miou": 0.4} and len(got["trials"]) == len(segment.SEGMENTATION_BLRS)
    calls.clear()
    seen = []
    again = segment.tune_segmentation("bb", fit, val, 3, minutes=0.2, done={t["blr"]: t for t in got["trials"][:2]},
                                      on_trial=seen.append)
    assert len(calls) == len(segment.SEGMENTATION_BLRS) - 2 and len(seen) == len(calls)
    assert again["chosen"] == got["chosen"]


def test_tune_segmentation_trains_a_real_head_briefly():
    from mimkit.eval.segment import tune_segmentation
    from mimkit.interop.hf_backbone import to_hf_backbone

    x, y = scenes(12)
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=16,
                          decoder_depth=1, decoder_num_heads=2)
    got = tune_segmentation(to_hf_backbone(model), (x[:8], y[:8]), (x[8:], y[8:]), 3, minutes=0.02, blrs=(1e-3, 1e-2),
                            channels=16, batch_size=4, progress=False)
    assert [t["blr"] for t in got["trials"]] == [1e-3, 1e-2] and all(t["steps"] >= 1 for t in got["trials"])
    assert got["chosen"]["val_miou"] == max(t["val_miou"] for t in got["trials"]) and 0 <= got["chosen"]["val_miou"] <= 1


def test_tune_segmentation_options_tries_the_lrs_then_each_other_option_at_the_chosen_lr(monkeypatch):
    """len(blrs) + len(options) - 1 trials: every lr on the default option, then the other options at the lr
    chosen there, each with its own backbone (built only when it runs), layer decay and minutes; an option
    better on validation is chosen; kept trials are not run again (old records without an option are the
    default's)."""
    from mimkit.eval import segment

    x, y = scenes(12)
    fit, val = (x[:8], y[:8]), (x[8:], y[8:])
    calls, built = [], []
    score = {("a", 4e-3): 0.40, ("b", 4e-3): 0.45}

    def fake(backbone, train, during, scored, num_labels, *, minutes, blr, layer_decay, **kw):
        calls.append((backbone, minutes, blr, layer_decay))
        assert train is fit and during is None and scored is val
        return {"test_miou": score.get((backbone, blr), 0.3), "steps": 3, "minutes": minutes}

    def make(name):
        return lambda: built.append(name) or name

    opts = [{"name": "a", "backbone": make("a"), "minutes": 8.0, "layer_decay": 1.0},
            {"name": "b", "backbone": make("b"), "minutes": 4.0, "layer_decay": 0.75}]
    monkeypatch.setattr(segment, "finetune_segmentation", fake)
    blrs = (1e-3, 4e-3, 1.6e-2)
    got = segment.tune_segmentation_options(opts, fit, val, 3, fraction=0.25, blrs=blrs)
    assert [(c[0], c[2]) for c in calls] == [("a", b) for b in blrs] + [("b", 4e-3)]
    assert [c[1] for c in calls] == [2.0, 2.0, 2.0, 1.0] and [c[3] for c in calls] == [1.0, 1.0, 1.0, 0.75]
    assert built == ["a", "b"] and len(got["trials"]) == len(blrs) + 1
    assert got["chosen"] == {"option": "b", "blr": 4e-3, "val_miou": 0.45}
    score[("b", 4e-3)] = 0.35  # the other option worse: the default's best stays
    calls.clear()
    old = {("a", t["blr"]): {k: v for k, v in t.items() if k != "option"} for t in got["trials"][:3]}
    again = segment.tune_segmentation_options(opts, fit, val, 3, fraction=0.25, blrs=blrs, done=old)
    assert calls == [("b", 1.0, 4e-3, 0.75)] and again["chosen"] == {"option": "a", "blr": 4e-3, "val_miou": 0.4}
    with pytest.raises(ValueError, match="must differ"):
        segment.tune_segmentation_options(opts + opts[:1], fit, val, 3, fraction=0.25)
