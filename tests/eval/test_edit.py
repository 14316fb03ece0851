"""The edit grader (`osp_core.eval.edit`) and the two-object shapes world it grades."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from osp_core.data import shapes
from osp_core.eval.edit import evaluate_edit, make_edit_task, masked_psnr, summarize
from osp_core.pipelines.edit_inputs import box_mask, parse_track


def test_two_object_clips_never_overlap_and_are_annotated(tmp_path):
    shapes.synthesize(tmp_path / "d", 6, seed=3, objects=2)
    entries = json.loads((tmp_path / "d" / "annotations.json").read_text())
    assert len(entries) == 6
    for entry in entries:
        a, b = entry["objects"]
        assert a["color"] != b["color"] and " and " in entry["cap"]
        assert len(a["boxes"]) == len(a["centers"]) == shapes.NUM_FRAMES
        for box_a, box_b in zip(a["boxes"], b["boxes"]):
            assert not shapes.boxes_meet(tuple(box_a), tuple(box_b))
        x0, y0, x1, y1 = a["boxes"][0]
        assert a["centers"][0] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2], abs=1e-3)
    with pytest.raises(Exception, match="--objects"):
        shapes.synthesize(tmp_path / "e", 1, objects=3)


def test_a_perfect_edit_scores_perfectly_and_a_wrong_one_does_not():
    task = make_edit_task(np.random.default_rng(90000))
    mask = box_mask(task.box, 17, 64, 64)
    track = [parse_track(task.track_arg, 17)]
    # the other object lies outside the box in every frame
    other = shapes.render(task.other)
    assert float((other.float().amax(-1) * mask).sum()) == 0
    right = evaluate_edit(task.target, task.source, mask, task.first_frame, track)
    assert right["psnr_outside"] == float("inf") and (right["color"], right["shape"]) == (right["expected_color"], right["expected_shape"])
    assert right["trajectory_error"] < 0.5 and right["first_frame_psnr"] == float("inf")
    wrong = evaluate_edit(task.source, task.source, mask, task.first_frame, track)  # nothing edited
    assert wrong["color"] != wrong["expected_color"] and wrong["trajectory_error"] > 3
    summary = summarize([right, wrong])
    assert summary["edits"] == 2 and summary["color_accuracy"] == 0.5 and summary["psnr_outside"] == 100.0
    assert masked_psnr(task.source, task.source, torch.zeros(17, 64, 64)) == float("inf")
