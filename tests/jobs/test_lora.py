"""LoRA adapters where the transformer is used: merged by `osp t2v lora merge` (equal to base +
adapter), several at once in any order with their scales, in sampling (`SamplingJob.lora`,
`osp t2v sample --lora`, the sidecar), and adapters that do not fit the model. The adapters are
made by PEFT itself on `builtin:shapes`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from osp_core.hub import resolve_model_dir
from osp_core.jobs.sampling import run_sampling
from osp_core.jobs.sampling_plan import SamplingJob
from tests.conftest import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPES = "builtin:shapes"
SAMPLE = {"model": SHAPES, "steps": 4, "seed": 5, "dtype": "fp32"}


def _base_folder() -> Path:
    return resolve_model_dir(SHAPES, subfolders=[]) / "17x64x64"


def _base():
    from osp_core.models.latte_t2v import LatteT2V

    return LatteT2V.from_pretrained(str(_base_folder())).eval()


def peft_adapter(folder: Path, seed: int, rank: int, targets: list[str], model=None) -> Path:
    """An adapter saved by PEFT's own `PeftModel.save_pretrained`, with random (non-zero) weights."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model if model is not None else _base(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": peft_adapter(root / "a", 1, 4, ["to_q", "to_v", "proj"]),  # attention and the feed-forward's first projection
        "b": peft_adapter(root / "b", 2, 2, ["to_q", "to_out.0"]),
    }


def _forward(model) -> torch.Tensor:
    torch.manual_seed(0)
    x, t, captions = torch.randn(1, 4, 5, 8, 8), torch.tensor([400]), torch.randn(1, 12, 64)
    with torch.no_grad():
        return model(x, t, captions, return_dict=False)[0]


def _update(folder: Path, module: str, scale: float) -> torch.Tensor:
    """scale x alpha / r x B A of `module` in an adapter folder, from its files."""
    from safetensors.torch import load_file

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    a, b = tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"]
    return scale * config["lora_alpha"] / config["r"] * (b @ a)


def test_merge_equals_base_plus_adapter(adapters, tmp_path, osp_in_process):
    from peft import PeftModel

    from osp_core.models.latte_t2v import LatteT2V

    out = tmp_path / "merged"
    proc = osp_in_process("t2v", "lora", "merge", "--lora", str(adapters["a"]), "--model", SHAPES, "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    merged = LatteT2V.from_pretrained(str(out)).eval()
    expected = _forward(PeftModel.from_pretrained(_base(), str(adapters["a"])).eval())  # base + adapter, unmerged
    torch.testing.assert_close(_forward(merged), expected, rtol=0, atol=1e-5)
    assert (_forward(merged) - _forward(_base())).abs().max() > 1e-3  # the adapter changes the output
    record = json.loads((out / "lora_merged.json").read_text())
    assert record["lora"][0]["sha256"] == hashlib.sha256((adapters["a"] / "adapter_model.safetensors").read_bytes()).hexdigest()
    # --transformer loads the merged folder
    proc = osp_in_process("t2v", "sample", "a red circle", "--transformer", str(out), "-o", str(tmp_path / "videos"), "--model", SHAPES, "--steps", "4", "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1
    # an existing folder is not replaced without --overwrite
    proc = osp_in_process("t2v", "lora", "merge", "--lora", str(adapters["a"]), "--model", SHAPES, "-o", str(out))
    assert_one_line_error(proc, str(out), "already exists", "--overwrite", code=2)


def test_merge_never_writes_over_an_adapter_it_reads(adapters, tmp_path, osp_in_process):
    """-o that is, holds or lies inside an input adapter (also through a symlink) is refused
    before anything is read or written, --overwrite or not: it would delete the adapter."""
    import shutil

    copy = shutil.copytree(adapters["a"], tmp_path / "runs" / "lora")
    (tmp_path / "link").symlink_to(copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    for out in (copy, tmp_path / "link", copy / "merged", tmp_path / "runs"):
        proc = osp_in_process("t2v", "lora", "merge", "--lora", f"{adapters['b']}:0.5", "--lora", str(copy), "--model", SHAPES, "-o", str(out), "--overwrite")
        assert_one_line_error(proc, "overlaps the adapter", code=2)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_adapters_add_up_in_any_order_with_their_scales(adapters):
    from osp_core.models.lora import merge_adapters

    base = _base()
    one, two = _base(), _base()
    merge_adapters(one, [(adapters["a"], 0.5), (adapters["b"], -2.0)])
    merge_adapters(two, [(adapters["b"], -2.0), (adapters["a"], 0.5)])
    w0, w1, w2 = base.state_dict(), one.state_dict(), two.state_dict()
    assert set(w1) == set(w0)  # plain LatteT2V weights again: nothing of PEFT left
    for key in w0:
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=1e-6)
    both = "transformer_blocks.0.attn1.to_q"  # in both adapters
    expected = w0[f"{both}.weight"] + _update(adapters["a"], both, 0.5) + _update(adapters["b"], both, -2.0)
    torch.testing.assert_close(w1[f"{both}.weight"], expected, rtol=0, atol=1e-6)
    only_b = "temporal_transformer_blocks.1.attn1.to_out.0"
    torch.testing.assert_close(w1[f"{only_b}.weight"], w0[f"{only_b}.weight"] + _update(adapters["b"], only_b, -2.0), rtol=0, atol=1e-6)
    untouched = "transformer_blocks.0.attn1.to_k.weight"
    assert torch.equal(w1[untouched], w0[untouched])


def _frames(path: Path) -> torch.Tensor:
    from osp_core.io.video import read_video

    return read_video(path).frames


def test_sampling_with_adapters_through_the_job_and_the_command_line(adapters, tmp_path, osp_in_process):
    base = run_sampling(SamplingJob(prompts=["a red circle"], output_dir=tmp_path / "base", **SAMPLE))
    adapted = run_sampling(SamplingJob(prompts=["a red circle"], output_dir=tmp_path / "lora", lora=[(adapters["a"], 1.5), f"{adapters['b']}:0.5"], **SAMPLE))
    sidecar = json.loads(Path(adapted.videos[0]["sidecar"]).read_text())
    digest = lambda name: hashlib.sha256((adapters[name] / "adapter_model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert sidecar["models"]["lora"] == [
        {"path": str(adapters["a"].absolute()), "sha256": digest("a"), "scale": 1.5},
        {"path": str(adapters["b"].absolute()), "sha256": digest("b"), "scale": 0.5},
    ]
    assert "lora" not in json.loads(Path(base.videos[0]["sidecar"]).read_text())["models"]
    assert not torch.equal(_frames(Path(base.videos[0]["video"])), _frames(Path(adapted.videos[0]["video"])))
    # at scale 0 an adapter adds nothing: the base's video, bit for bit
    args = ["t2v", "sample", "a red circle", "--model", SHAPES, "--steps", "4", "--seed", "5", "--dtype", "fp32", "-o", str(tmp_path / "zero"), "--lora", f"{adapters['a']}:0", "--json"]
    proc = osp_in_process(*args)
    assert proc.returncode == 0, proc.stderr
    video = Path(json.loads(proc.stdout)["videos"][0]["video"])
    assert torch.equal(_frames(video), _frames(Path(base.videos[0]["video"])))


def test_an_adapter_for_another_model_config_or_base_is_one_line(adapters, tmp_path, osp_in_process):
    from osp_core.models.latte_t2v import LatteT2V
    from osp_core.models.lora import add_lora, adapted_names, adapter_state, base_record, write_adapter
    from tests.train.helpers import TINY_T2V

    other_config = peft_adapter(tmp_path / "other-config", 3, 2, ["to_q"], model=LatteT2V(**TINY_T2V))
    args = ["t2v", "sample", "a red circle", "--model", SHAPES, "--steps", "4", "--seed", "1"]
    proc = osp_in_process(*args, "-o", str(tmp_path / "out1"), "--lora", str(other_config))
    assert_one_line_error(proc, str(other_config), "another model config", "transformer_blocks.0.attn1.to_q", code=3)
    assert not (tmp_path / "out1").exists()
    # osp's own adapters name their base: the same config with other weights is refused
    torch.manual_seed(7)
    other = LatteT2V.from_config(_base().config)
    add_lora(other, 2, None, 0.0, "spatial")
    write_adapter(tmp_path / "other-base", other, adapter_state(other), base_record(other, adapted_names(other), "a random transformer"))
    proc = osp_in_process(*args, "-o", str(tmp_path / "out2"), "--lora", str(tmp_path / "other-base"))
    assert_one_line_error(proc, "trained on another base transformer", "a random transformer", code=3)
    assert not (tmp_path / "out2").exists()
    proc = osp_in_process("t2v", "lora", "merge", "--lora", str(tmp_path / "other-base"), "--model", SHAPES, "-o", str(tmp_path / "merged"))
    assert_one_line_error(proc, "trained on another base transformer", code=3)
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))


def test_edit_takes_adapters_as_sampling_does(adapters, tmp_path, osp_in_process):
    """`osp edit --lora`: the edit loads through the one sampling loader, so its adapters merge
    the same way (scale 0 changes nothing, bit for bit) and its sidecar names them."""
    source = run_sampling(SamplingJob(prompts=["a red circle moving right"], output_dir=tmp_path / "src", **SAMPLE)).videos[0]["video"]
    edit = ["edit", source, "--box", "8,8,40,40", "--prompt", "a blue square", "--model", SHAPES, "--engine", "blend", "--strength", "1", "--steps", "4", "--seed", "3", "--dtype", "fp32", "--json"]
    frames = {}
    for name, extra in (("plain", []), ("zero", ["--lora", f"{adapters['a']}:0"]), ("scaled", ["--lora", f"{adapters['a']}:1.5"])):
        proc = osp_in_process(*edit, "-o", str(tmp_path / f"{name}.mp4"), *extra)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)
        frames[name] = _frames(Path(record["video"]))
    assert torch.equal(frames["plain"], frames["zero"]) and not torch.equal(frames["plain"], frames["scaled"])
    sidecar = json.loads((tmp_path / "scaled.json").read_text())
    assert [(a["path"], a["scale"]) for a in sidecar["models"]["lora"]] == [(str(adapters["a"].absolute()), 1.5)]
    assert "lora" not in json.loads((tmp_path / "plain.json").read_text())["models"]
