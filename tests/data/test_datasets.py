"""Clip datasets: frame sampling, joint images, skip-and-count, data order and the feature cache."""

from __future__ import annotations

import json

import pytest
import torch

from osp_core.data.annotations import load_entries
from osp_core.data.cache import FeatureCache
from osp_core.data.datasets import ClipSpec, GlobalBatchSampler, VideoClipDataset, collate_clips
from osp_core.errors import InputError
from osp_core.io import read_video, resize_center_crop
from tests.train.helpers import write_videos


@pytest.fixture(scope="module")
def data_list(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("clips"), count=3, frames=12)


def test_clip_is_the_strided_window_resized_and_cropped(data_list):
    entries = load_entries(data_list)
    spec = ClipSpec(frames=5, stride=2, height=32, width=32, random_start=False)
    item = VideoClipDataset(entries, spec)[0]
    assert item["video"].shape == (3, 5, 32, 32) and item["skipped"] == []
    assert -1.0 <= item["video"].min() and item["video"].max() <= 1.0
    expected = resize_center_crop(read_video(entries[0].path).frames[0:9:2], (32, 32))
    got = ((item["video"].permute(1, 2, 3, 0) + 1) * 127.5).round()
    assert torch.equal(got, expected.float())


def test_random_start_is_seeded_per_epoch_and_index(data_list):
    entries = load_entries(data_list)
    spec = ClipSpec(frames=3, stride=1, height=16, width=16, random_start=True)
    a, b = VideoClipDataset(entries, spec, seed=1), VideoClipDataset(entries, spec, seed=1)
    keys = [a[(epoch, 0)]["key"] for epoch in range(6)]
    assert keys == [b[(epoch, 0)]["key"] for epoch in range(6)]  # same draws in another process
    assert len(set(keys)) > 1  # but the window moves between epochs


def test_unreadable_and_short_samples_are_skipped_and_reported(data_list, tmp_path):
    entries = load_entries(data_list)  # the last entry is the corrupt file
    spec = ClipSpec(frames=5, stride=2, height=16, width=16, random_start=False)
    dataset = VideoClipDataset(entries, spec)
    broken = len(entries) - 1
    item = dataset[broken]
    assert item["index"] == 0  # replaced by the next readable sample
    assert [path for path, _ in item["skipped"]] == [str(entries[broken].path)]
    assert "cannot read" in item["skipped"][0][1]
    assert entries[broken].path.read_bytes() == b"this is not a video"  # user data untouched
    too_long = VideoClipDataset(entries[:-1], ClipSpec(frames=12, stride=2, height=16, width=16))
    with pytest.raises(InputError, match="could not be read.*too short"):
        too_long[0]  # every clip is too short: a clear error instead of an endless loop


def test_clips_with_cached_latents_are_not_decoded(data_list):
    entries = load_entries(data_list)[:-1]
    spec = ClipSpec(frames=3, stride=1, height=16, width=16, random_start=True)
    full = [VideoClipDataset(entries, spec, seed=3)[(1, i)] for i in range(len(entries))]
    cached_keys = {full[0]["key"]}
    lazy = VideoClipDataset(entries, spec, seed=3, is_cached=cached_keys.__contains__)
    items = [lazy[(1, i)] for i in range(len(entries))]
    # same windows and captions as without the cache; only the cached clip comes without pixels
    assert [(i["key"], i["caption"], i["start"]) for i in items] == [(i["key"], i["caption"], i["start"]) for i in full]
    assert items[0]["video"] is None and torch.equal(items[1]["video"], full[1]["video"])
    assert torch.equal(lazy.read_clip(items[0]["index"], items[0]["start"]), full[0]["video"])
    mixed = collate_clips(items)["video"]
    assert isinstance(mixed, list) and mixed[0] is None and torch.equal(mixed[1], full[1]["video"])
    assert collate_clips(full)["video"].shape == (len(entries), 3, 3, 16, 16)
    # joint images drawn from the clip's own frames need the frames
    joint = VideoClipDataset(entries, spec, seed=3, use_image_num=1, is_cached=lambda key: True)
    assert joint[0]["video"] is not None


def test_has_encoding_sees_cache_entries_and_pickles(tmp_path):
    import pickle

    from osp_core.data.cache import HasEncoding, encoder_key

    cache = FeatureCache(tmp_path)
    cache.put("vae", encoder_key("clip-a", "vae-1"), {"moments": torch.zeros(2)})
    has = pickle.loads(pickle.dumps(HasEncoding(cache.root, "vae", "vae-1")))  # DataLoader workers get a copy
    assert has("clip-a") and not has("clip-b")
    assert not HasEncoding(cache.root, "vae", "vae-2")("clip-a")  # another encoder's latents do not count


def test_joint_images_from_the_video_and_from_an_image_list(data_list, tmp_path):
    from osp_core.io import write_video

    entries = load_entries(data_list)[:3]
    spec = ClipSpec(frames=3, stride=1, height=16, width=16)
    item = VideoClipDataset(entries, spec, use_image_num=2)[1]
    assert item["images"].shape == (3, 2, 16, 16)
    assert item["image_captions"] == [item["caption"]] * 2
    # every image is one of the clip's frames
    for j in range(2):
        assert any(torch.equal(item["images"][:, j], item["video"][:, t]) for t in range(3))

    image = torch.full((1, 20, 20, 3), 200, dtype=torch.uint8)
    write_video(tmp_path / "img.mp4", image)  # a one-frame "image" the reader decodes
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "images.json").write_text(json.dumps([{"path": "img.mp4", "cap": "grey"}, {"path": "bad.png", "cap": "bad"}]))
    images = load_entries(tmp_path / "images.json")
    item = VideoClipDataset(entries, spec, seed=3, use_image_num=4, image_entries=images)[0]
    assert item["image_captions"] == ["grey"] * 4
    assert len(item["image_keys"]) == 4
    batch = collate_clips([item, item])
    assert batch["images"].shape == (2, 3, 4, 16, 16) and batch["video"].shape == (2, 3, 3, 16, 16)


def test_sampler_shards_epochs_and_resumes_at_a_position():
    ranks = [GlobalBatchSampler(5, batch_size=1, num_replicas=2, rank=r, seed=0) for r in range(2)]
    streams = [iter(r) for r in ranks]
    taken = [[next(s) for _ in range(5)] for s in streams]  # 5 steps of 2 samples: two epochs
    merged = [item for step in zip(*taken) for item in step]
    assert [e for e, _ in merged] == [0] * 5 + [1] * 5
    assert {i for _, i in merged[:5]} == {i for _, i in merged[5:]} == set(range(5))
    resumed = iter(GlobalBatchSampler(5, batch_size=1, num_replicas=2, rank=0, seed=0, start=4))
    assert [next(resumed) for _ in range(3)] == taken[0][2:5]


def test_feature_cache_round_trip_and_truncated_files(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    assert cache.get("vae", "ab12") is None
    cache.put("vae", "ab12", {"moments": torch.arange(6.0).view(2, 3)})
    assert torch.equal(cache.get("vae", "ab12")["moments"], torch.arange(6.0).view(2, 3))
    path = next((tmp_path / "cache").rglob("*.safetensors"))
    path.write_bytes(path.read_bytes()[:10])  # a file cut short by a kill: recomputed, not fatal
    assert cache.get("vae", "ab12") is None
    assert (cache.hits, cache.misses) == (1, 2)
