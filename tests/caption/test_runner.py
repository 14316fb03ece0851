"""`run_caption` in-process: resume after an injected crash, failures, overwrite, image prompts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from osp_core.caption import journal as jr
from osp_core.caption.captioner import Captioner, CaptionRequest
from osp_core.caption.filters import FilterConfig
from osp_core.caption.runner import CaptionJob, run_caption
from osp_core.errors import InputError, OSPError
from osp_core.io import write_video


class FakeCaptioner:
    """Deterministic captions from the frames themselves; records every request."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[CaptionRequest] = []

    def caption(self, requests: list[CaptionRequest]) -> list[str]:
        self.requests += requests
        return [f"a clip of {len(r.frames)} frames with mean level {np.mean(r.frames):.2f}" for r in requests]


class CrashAfter:
    """Wraps a captioner and dies (like a kill) when asked for batch number `n`."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n, self.calls = inner, n, 0
        self.name = inner.name

    def caption(self, requests):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.inner.caption(requests)


@pytest.fixture(scope="module")
def real_captioner(tiny_vlm):
    return Captioner.load(str(tiny_vlm), "cpu", torch.float32, max_new_tokens=5)


def _job(inputs, output, **kw) -> CaptionJob:
    kw.setdefault("num_frames", 3)
    kw.setdefault("batch_size", 2)
    return CaptionJob(inputs=list(inputs), output=output, model="tiny", **kw)


def _clip_records(directory):
    lines = []
    for path in sorted(directory.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in lines if r["type"] == "clip"]


def test_injected_crash_then_resume_repeats_and_loses_nothing(clips_dir, tmp_path, real_captioner):
    inputs = [clips_dir / "long.mp4", clips_dir / "moving.mp4"]
    options = dict(clip_frames=4, filters=FilterConfig(min_motion=0))  # 10 + 6 clips
    reference = run_caption(_job(inputs, tmp_path / "ref.json", **options), captioner=real_captioner)
    assert reference.captioned == 16

    out = tmp_path / "ann.json"
    with pytest.raises(KeyboardInterrupt):
        run_caption(_job(inputs, out, **options), captioner=CrashAfter(real_captioner, n=4))
    journal = jr.journal_dir(out)
    first = _clip_records(journal)
    assert len(first) == 6  # three batches of two made it to the journal, the fourth was in flight
    assert not out.exists()

    with pytest.raises(InputError, match="already exists"):
        run_caption(_job(inputs, out, **options), captioner=real_captioner)
    counting = CrashAfter(real_captioner, n=0)
    summary = run_caption(_job(inputs, out, resume=True, **options), captioner=counting)
    assert summary.resumed == 6 and summary.processed == 10
    assert counting.calls == 5  # only the 10 missing clips were captioned
    keys = [r["key"] for r in _clip_records(journal)]
    assert len(keys) == len(set(keys)) == 16  # no clip captioned twice
    assert json.loads(out.read_text()) == json.loads((tmp_path / "ref.json").read_text())


def test_failed_batches_are_recorded_and_a_broken_model_stops_the_run(clips_dir, tmp_path):
    class FailsOnSecond(FakeCaptioner):
        calls = 0

        def caption(self, requests):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("CUDA out of memory\nmore details")
            return super().caption(requests)

    job = _job([clips_dir / "long.mp4"], tmp_path / "a.json", clip_frames=8, filters=FilterConfig(min_motion=0))
    summary = run_caption(job, captioner=FailsOnSecond())
    assert summary.captioned == 3 and len(summary.failed) == 2
    assert summary.failed[0]["reason"] == "captioning failed: RuntimeError: CUDA out of memory"
    assert summary.failed[0]["frame_idx"] == "16:24"
    # a rerun retries the failures only
    retry = FakeCaptioner()
    again = run_caption(_job([clips_dir / "long.mp4"], tmp_path / "a.json", clip_frames=8, filters=FilterConfig(min_motion=0), resume=True), captioner=retry)
    assert len(retry.requests) == 2 and again.captioned == 5 and not again.failed

    class AlwaysFails(FakeCaptioner):
        def caption(self, requests):
            raise ValueError("bad processor")

    with pytest.raises(OSPError, match="fails on every batch"):
        run_caption(_job([clips_dir / "long.mp4"], tmp_path / "b.json", clip_frames=8, filters=FilterConfig(min_motion=0)), captioner=AlwaysFails())


def test_empty_captions_are_failures(clips_dir, tmp_path):
    class Silent(FakeCaptioner):
        def caption(self, requests):
            return ["  "] * len(requests)

    summary = run_caption(_job([clips_dir / "moving.mp4"], tmp_path / "a.json"), captioner=Silent())
    assert summary.captioned == 0 and summary.failed[0]["reason"] == "the model returned an empty caption"
    assert json.loads((tmp_path / "a.json").read_text()) == []


def test_overwrite_starts_over_and_settings_must_match_on_resume(clips_dir, tmp_path):
    out = tmp_path / "a.json"
    run_caption(_job([clips_dir / "moving.mp4"], out), captioner=FakeCaptioner())
    with pytest.raises(InputError, match="other settings"):
        run_caption(_job([clips_dir / "moving.mp4"], out, num_frames=5, resume=True), captioner=FakeCaptioner())
    fake = FakeCaptioner()
    summary = run_caption(_job([clips_dir / "moving.mp4"], out, num_frames=5, overwrite=True), captioner=fake)
    assert summary.resumed == 0 and len(fake.requests) == 1 and len(fake.requests[0].frames) == 5
    assert len(_clip_records(jr.journal_dir(out))) == 1
    with pytest.raises(InputError, match="exclude each other"):
        run_caption(_job([clips_dir / "moving.mp4"], out, resume=True, overwrite=True), captioner=fake)


def test_metadata_filters_drop_before_decoding(clips_dir, tmp_path):
    fake = FakeCaptioner()
    job = _job([clips_dir], tmp_path / "a.json", clip_frames=16, filters=FilterConfig(min_width=65, min_motion=0))
    summary = run_caption(job, captioner=fake)
    assert summary.dropped == {"low_resolution": 5} and not fake.requests  # 64-px-wide clips
    job = _job([clips_dir], tmp_path / "b.json", clip_frames=32)
    summary = run_caption(job, captioner=fake)
    assert summary.dropped == {"too_short": 3} and summary.captioned == 1  # only long.mp4 has 32 frames


def test_images_use_the_v110_prompts_and_image_fields(tmp_path, real_captioner):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, size in (("sign.png", (40, 56)), ("plain.jpg", (56, 40)), ("tiny.png", (8, 8))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([{"path": "sign.png", "cap": "a shop", "ocr": "OPEN"}, "plain.jpg", "tiny.png", "broken.png"]))

    class Recording:
        name = real_captioner.name

        def __init__(self):
            self.prompts = []

        def caption(self, requests):
            self.prompts += [r.prompt for r in requests]
            assert all(len(r.frames) == 1 for r in requests)
            return real_captioner.caption(requests)

    recording = Recording()
    out = tmp_path / "out" / "images.json"
    summary = run_caption(_job([listing], out, images=True, filters=FilterConfig(min_height=16)), captioner=recording)
    assert sorted(recording.prompts) == sorted(
        [
            'Combine this rough caption: "a shop", analyze the image in a comprehensive and detailed manner. "OPEN" can be recognized in the image.',
            "Analyze the image in a comprehensive and detailed manner.",
        ]
    )
    assert summary.dropped == {"low_resolution": 1} and [f["path"] for f in summary.failed] == ["broken.png"]
    entries = json.loads(out.read_text())
    assert [e["path"] for e in entries] == ["plain.jpg", "sign.png"]
    for entry in entries:
        assert set(entry) == {"path", "cap", "resolution", "caption_model", "is_english"}
    assert entries[0]["resolution"] == {"height": 56, "width": 40}
    assert (tmp_path / "broken.png").exists()  # reported, never deleted


def test_a_video_template_is_refused_for_images(tmp_path):
    (tmp_path / "x.png").write_bytes(b"x")
    with pytest.raises(InputError, match="is for videos"):
        run_caption(_job([tmp_path / "x.png"], tmp_path / "a.json", images=True, prompt="video"), captioner=FakeCaptioner())


def test_clips_that_are_not_under_the_root_are_refused(clips_dir, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(clips_dir / "moving.mp4", other / "m.mp4")
    with pytest.raises(InputError, match="not inside the dataset root"):
        run_caption(_job([other / "m.mp4"], tmp_path / "a.json", root=clips_dir), captioner=FakeCaptioner())
    write_video(other / "n.mp4", torch.zeros(4, 16, 16, 3, dtype=torch.uint8), fps=8)
    summary = run_caption(_job([other], tmp_path / "b.json", root=tmp_path, filters=FilterConfig(min_motion=0)), captioner=FakeCaptioner())
    assert summary.captioned == 2
    assert [e["path"] for e in json.loads((tmp_path / "b.json").read_text())] == ["elsewhere/m.mp4", "elsewhere/n.mp4"]


@pytest.mark.parametrize(
    "inputs, output, kw, needle",
    [
        (["missing"], "a.json", {}, "does not exist"),
        (["moving.mp4"], "a.txt", {}, "not a .json file"),
        (["moving.mp4"], "a.json", {"clip_stride": 4}, "--clip-stride needs --clip-frames"),
        (["moving.mp4"], "a.json", {"batch_size": 0}, "--batch-size"),
        (["moving.mp4"], "a.json", {"frames_as": "gif"}, "--frames-as"),
        (["moving.mp4"], "a.json", {"images": True, "clip_frames": 8}, "--images"),
    ],
)
def test_bad_options_are_refused_before_any_work(clips_dir, tmp_path, inputs, output, kw, needle):
    job = _job([clips_dir / i for i in inputs], tmp_path / output, **kw)
    with pytest.raises(InputError, match=needle):
        run_caption(job, captioner=FakeCaptioner())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["file_as_folder", "under_a_file", "proc", "sys"])
def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path, clips_dir, where):
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    output = {
        "file_as_folder": a_file / "ann.json",
        "under_a_file": a_file / "sub" / "ann.json",
        "proc": Path("/proc/osp-no-such-process/ann.json"),
        "sys": Path("/sys/ann.json"),
    }[where]
    if not output.parts[1:2] or not Path(*output.parts[:2]).is_dir():
        pytest.skip(f"{output.parts[1]} does not exist here")
    # The model does not exist either: the output is checked first, so its error is the one raised.
    job = CaptionJob(inputs=[clips_dir / "moving.mp4"], output=output, model=str(tmp_path / "no-model"))
    with pytest.raises(InputError, match="output folder"):
        run_caption(job)
    assert a_file.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_refused_run_removes_the_folders_it_created(clips_dir, tmp_path):
    out = tmp_path / "new" / "deeper" / "ann.json"
    with pytest.raises(InputError, match="unknown prompt template"):
        run_caption(_job([clips_dir / "moving.mp4"], out, prompt="nope"), captioner=FakeCaptioner())
    assert list(tmp_path.iterdir()) == []
    run_caption(_job([clips_dir / "moving.mp4"], out), captioner=FakeCaptioner())
    assert out.is_file()
    blocked = tmp_path / "b.json"
    jr.journal_dir(blocked).write_text("a file where the journal folder goes")
    with pytest.raises(InputError, match="journal .* is a file"):
        run_caption(_job([clips_dir / "moving.mp4"], blocked), captioner=FakeCaptioner())


def test_overwrite_removes_nothing_until_the_whole_run_is_validated(clips_dir, tmp_path):
    out = tmp_path / "cap" / "ann.json"
    run_caption(_job([clips_dir / "moving.mp4"], out), captioner=FakeCaptioner())
    journal = jr.journal_dir(out)
    before = (out.read_text(), (journal / "rank0.jsonl").read_text())
    needs_caption = tmp_path / "needs_caption.yaml"
    needs_caption.write_text("kind: video\nprompt: 'Improve this caption: {}'\nfields: [caption]\n")
    refused = [
        (dict(prompt="nope"), InputError, "unknown prompt template"),  # a typo in the prompt
        (dict(prompt=str(needs_caption)), InputError, "needs 'caption' text"),  # fields the inputs lack
        (dict(model=str(tmp_path / "no-such-model")), OSPError, "no-such-model"),  # a typo in the model
        (dict(inputs=[clips_dir / "missing.mp4"]), InputError, "does not exist"),
    ]
    for kw, error, needle in refused:
        kw = {"inputs": [clips_dir / "moving.mp4"], **kw}
        job = CaptionJob(output=out, overwrite=True, num_frames=3, **kw)
        with pytest.raises(error, match=needle):
            run_caption(job)  # no captioner given: the model named by the job is loaded
        assert (out.read_text(), (journal / "rank0.jsonl").read_text()) == before, kw
    # once everything is valid, --overwrite does start over
    fake = FakeCaptioner()
    summary = run_caption(_job([clips_dir / "moving.mp4"], out, num_frames=4, overwrite=True), captioner=fake)
    assert summary.resumed == 0 and len(fake.requests) == 1 and len(_clip_records(journal)) == 1


def test_templates_whose_fields_the_inputs_cannot_fill_are_refused_up_front(clips_dir, tmp_path):
    from PIL import Image

    needs_caption = tmp_path / "needs_caption.yaml"
    needs_caption.write_text("kind: video\nprompt: 'Improve this caption: {}'\nfields: [caption]\n")
    fake = FakeCaptioner()
    with pytest.raises(InputError, match=r"needs 'caption' text, but 4 of 4 inputs have none") as video_error:
        run_caption(_job([clips_dir], tmp_path / "v.json", prompt=str(needs_caption)), captioner=fake)
    assert '"cap"' in video_error.value.hint
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(images / "a.png")
    with pytest.raises(InputError, match="prompt template 'image_ocr' needs 'caption' text") as image_error:
        run_caption(_job([images], tmp_path / "i.json", images=True, prompt="image_ocr"), captioner=fake)
    assert '"cap"' in image_error.value.hint
    listing = tmp_path / "partly.jsonl"  # one entry has both texts, the other only a caption
    listing.write_text(json.dumps({"path": "imgs/a.png", "cap": "black", "ocr": "NONE"}) + "\n" + json.dumps({"path": "imgs/b.png", "cap": "x"}) + "\n")
    with pytest.raises(InputError, match=r"needs 'ocr' text, but 1 of 2") as partly_error:
        run_caption(_job([listing], tmp_path / "p.json", images=True, prompt="image_ocr"), captioner=fake)
    assert '"ocr"' in partly_error.value.hint
    assert not fake.requests and sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "needs_caption.yaml", "partly.jsonl"]
    # a list file that supplies the field is captioned with it
    video_list = tmp_path / "videos.jsonl"
    video_list.write_text(json.dumps({"path": str(clips_dir / "moving.mp4"), "cap": "a yellow square"}) + "\n")
    summary = run_caption(_job([video_list], tmp_path / "ok.json", prompt=str(needs_caption)), captioner=fake)
    assert summary.captioned == 1 and [r.prompt for r in fake.requests] == ["Improve this caption: a yellow square"]
