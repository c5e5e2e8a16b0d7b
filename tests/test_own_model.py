"""Bring your own model: a network defined in a file outside the package (concatenation, a grouped
convolution, squeeze-and-excitation), its own trained weights, distillation taps found from its
structure, compressed end to end on a real agent with onnxruntime parity; and every bad input a
user would hit, named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from host.compress.distill import feature_taps
from host.compress.train import CheckpointError, load_weights
from host.models import ModelError, build_model, model_id
from tests.helpers import exact_int8_weight_bits

ROOT = Path(__file__).resolve().parent.parent

NETS = '''
import torch
from torch import nn


def block(cin, cout, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class Branchy(nn.Module):
    """A stem, two branches concatenated, a grouped convolution with SE, a downsampling block, a head."""

    def __init__(self, num_classes, width=16, in_channels=1, groups=4):
        super().__init__()
        self.stem = block(in_channels, width)
        self.left = block(width, width)
        self.right = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.grouped = block(2 * width, 2 * width, stride=2, groups=groups)
        self.se = SqueezeExcite(2 * width)
        self.down = block(2 * width, 4 * width, stride=2)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = self.se(self.grouped(x))
        return self.head(self.down(x).mean((2, 3)))


def branchy(num_classes, width=16, groups=4):
    return Branchy(num_classes, width, groups=groups)


class Attention(nn.Module):
    """timm's layout: one qkv Linear, heads in `num_heads`, an output projection."""

    def __init__(self, dim, num_heads, tokens):
        super().__init__()
        self.num_heads, self.head_dim, self.tokens = num_heads, dim // num_heads, tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        qkv = self.qkv(x).reshape(-1, self.tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim**-0.5, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(-1, self.tokens, self.num_heads * self.head_dim))


class Encoder(nn.Module):
    def __init__(self, dim, num_heads, tokens):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """2x2 patches of an 8x8 image: 16 tokens, no class token (mean pooling), three encoders."""

    def __init__(self, num_classes, dim=32, num_heads=4, depth=3):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 2, stride=2)
        self.pos = nn.Parameter(torch.zeros(1, 16, dim))
        self.encoders = nn.Sequential(*(Encoder(dim, num_heads, 16) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.encoders(self.embed(x).flatten(2).transpose(1, 2) + self.pos)
        return self.head(self.norm(x).mean(1))


def tiny_vit(num_classes, dim=32, num_heads=4):
    return TinyViT(num_classes, dim, num_heads)


class Shuffled(nn.Module):
    """ShuffleNet's unit: grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1."""

    def __init__(self, num_classes, groups=4):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.squeeze = nn.Conv2d(32, 32, 1, groups=groups)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.expand = nn.Conv2d(32, 32, 1, groups=groups)
        self.groups = groups
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.squeeze(torch.relu(self.stem(x))))
        b, c, h, w = x.shape
        x = x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.relu(self.expand(self.depthwise(x))).mean((2, 3)))


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.mean() > 0 else x  # data-dependent: a trace keeps one branch


class Gated(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.gate = Gate()
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.gate(self.conv(x)).mean((2, 3)))


class Linear(nn.Module):
    """Nothing to prune: one classifier over the flattened image."""

    def __init__(self, num_classes):
        super().__init__()
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1))


def not_a_model():
    return "a string"


def broken(num_classes):
    raise RuntimeError("the factory broke")


NOT_CALLABLE = 3
'''


@pytest.fixture()
def nets(tmp_path, monkeypatch) -> str:
    """The file of user models, written outside the package; the working directory is its folder."""
    (tmp_path / "nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    return "nets.py"


def _pruned(name: str, kwargs: dict, keep: float = 0.5) -> tuple[dict[str, str | None], dict[str, int], float]:
    """(each layer's pruning group, each conv's width after pruning, parameters kept)."""
    from host.compress.apply import apply_policy, random_calibration
    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import count_params, layer_limits
    from lut_store.precision import Precision

    model = build_model(name, 10, (1, 8, 8), kwargs)
    limits = layer_limits(model, torch.zeros((1, 1, 8, 8)))
    fixed = {lim.name: LayerAction(1.0, Precision.INT8) for lim in limits if lim.group is None}
    policy = Policy.uniform(name, [lim.name for lim in limits], keep, Precision.INT8, fixed)
    before = count_params(model)
    apply_policy(model, policy, torch.zeros((1, 1, 8, 8)), 8, random_calibration((1, 8, 8)))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return {lim.name: lim.group for lim in limits}, widths, count_params(model) / before


def test_a_model_from_a_file_prunes_through_concatenation_and_squeeze_excite(nets):
    groups, widths, kept = _pruned(f"{nets}:branchy", {"width": 16, "groups": 1})
    # Each branch of the concatenation prunes alone; SE's expansion prunes with the conv it scales.
    assert groups["left.0"] == "left.0" and groups["right.0"] == "right.0" and groups["head"] is None
    assert groups["grouped.0"] == groups["se.expand"]
    assert widths == {
        "stem.0": 8,
        "left.0": 8,
        "right.0": 8,
        "grouped.0": 16,
        "se.reduce": 8,
        "se.expand": 16,
        "down.0": 32,
    }
    assert kept < 0.4
    assert model_id(f"{nets}:branchy", {"width": 16}) != model_id(f"{nets}:branchy", {"width": 8})


def test_grouped_convolutions_prune_in_line_or_stay_whole(nets):
    groups, widths, _ = _pruned(f"{nets}:branchy", {"width": 16, "groups": 4})
    # The concatenation feeds the grouped conv: pruning a branch would cut its channel groups out
    # of line, so both branches stay whole; the grouped conv's own outputs (with SE) prune.
    assert groups["left.0"] is None and groups["right.0"] is None and widths["left.0"] == widths["right.0"] == 16
    assert groups["grouped.0"] == groups["se.expand"] == "se.expand" and widths["grouped.0"] == 16
    assert all(groups[n] == n for n in ("stem.0", "se.reduce", "down.0")) and widths["stem.0"] == 8


def test_a_channel_shuffle_keeps_its_groups_whole(nets):
    groups, widths, _ = _pruned(f"{nets}:Shuffled", {})
    assert groups["squeeze"] is None and groups["depthwise"] is None  # behind the shuffle's reshape
    assert groups["stem"] == "stem" and widths["stem"] == 16  # the grouped 1x1 loses 4 inputs per group
    assert groups["expand"] == "expand" and widths["expand"] == 16


def test_stage_taps_of_a_model_of_ones_own(nets):
    model = build_model(f"{nets}:branchy", 10, (1, 8, 8))
    assert feature_taps(model, torch.zeros((1, 1, 8, 8))) == ("right", "se", "down")  # 8x8, 4x4, 2x2 stage ends


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("nets.py:missing", {}, "nets.py has no 'missing'"),
        ("nets.py:NOT_CALLABLE", {}, "NOT_CALLABLE is a int, not a callable"),
        ("nets.py:not_a_model", {}, "returned a str, not a torch.nn.Module"),
        ("nets.py:broken", {}, "the factory raised RuntimeError: the factory broke"),
        ("elsewhere.py:branchy", {}, "elsewhere.py is not a file"),
        ("no_such_package.models:net", {}, "module 'no_such_package.models' does not import: ModuleNotFoundError"),
        ("nets.py:branchy", {"depth": 3}, "unexpected keyword argument 'depth'"),
        ("nets.py:branchy", {"groups": 5}, "the factory raised ValueError: in_channels must be divisible by groups"),
        ("resnet19", {}, "unknown model 'resnet19'; choices: mlp, mobilenetv2, resnet18, vit, or your own"),
        ("mlp", {"width": 3}, "factory_kwargs are for a model factory"),
    ],
)
def test_bad_models_are_named(nets, name, kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_model(name, 10, (1, 8, 8), kwargs)


def test_a_model_that_does_not_fit_the_data(nets):
    from host.models import check_model

    with pytest.raises(ModelError, match=r"rejects inputs of shape \(2, 3, 8, 8\): RuntimeError: .*channels"):
        build_model(f"{nets}:branchy", 10, (3, 8, 8))  # the model's own error, shown

    model = build_model(f"{nets}:branchy", 10, (1, 8, 8))
    with pytest.raises(ModelError, match=r"gives \(2, 10\) for a batch of 2, not logits of shape \(2, 6\)"):
        check_model(model, "nets.py:branchy", 6, (1, 8, 8))


def test_weights_that_do_not_fit_name_the_tensors(nets, tmp_path):
    model = build_model(f"{nets}:branchy", 10, (1, 8, 8))
    narrow = build_model(f"{nets}:branchy", 10, (1, 8, 8), {"width": 8})
    torch.save(narrow.state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match=r"do not fit the model; mis-shaped: stem.0.weight \[8, 1, 3, 3\]"):
        load_weights(model, tmp_path / "narrow.pt")
    state = model.state_dict()
    torch.save({"model": {**{k: v for k, v in state.items() if k != "head.bias"}, "extra.w": torch.zeros(1)}}, "x.pt")
    with pytest.raises(CheckpointError, match=r"missing: head.bias; unexpected: extra.w"):
        load_weights(model, tmp_path / "x.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="hold a list, not a state_dict"):
        load_weights(model, tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="do not exist"):
        load_weights(model, tmp_path / "none.pt")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pt")  # a training checkpoint holding one
    assert load_weights(build_model(f"{nets}:branchy", 10, (1, 8, 8)), tmp_path / "wrapped.pt") is not None


def hadmc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HADMC_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_policy_init_for_a_model_of_ones_own_lists_its_layers_in_execution_order(nets, tmp_path):
    out = tmp_path / "p.json"
    common = ("policy", "init", "--model", "nets.py:branchy", "--input-shape", "1,8,8", "--classes", "10")
    result = hadmc(*common, "--factory-kwargs", '{"width": 16}', "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "nets.py:branchy"
    assert list(doc["layers"]) == [
        "stem.0",
        "left.0",
        "right.0",
        "grouped.0",
        "se.reduce",
        "se.expand",
        "down.0",
        "head",
    ]
    bad = hadmc(*common, "--factory-kwargs", "[1]", "-o", str(out), cwd=tmp_path)
    assert bad.returncode == 1 and "--factory-kwargs must be a JSON object" in bad.stderr
    bad = hadmc("policy", "init", "--model", "nets.py:broken", "--classes", "10", "-o", str(out), cwd=tmp_path)
    assert bad.returncode == 1 and "the factory raised RuntimeError: the factory broke" in bad.stderr
    assert "Traceback" not in bad.stderr


def _trained_teacher(nets: str, factory: str, tmp_path: Path) -> tuple[torch.nn.Module, Any]:
    """The user's own training, done here: a few epochs on digits, saved as teacher.pt."""
    from host.compress.train import TrainConfig, train
    from host.data import DataConfig, make_loaders

    loaders = make_loaders(DataConfig(name="digits").load(), batch_size=64, seed=0)
    torch.manual_seed(0)
    teacher = build_model(f"{nets}:{factory}", 10, (1, 8, 8))
    train(teacher, loaders.train, TrainConfig(epochs=8, lr=3e-3))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    return teacher.eval(), loaders


# What 8 epochs on digits reach (a transformer learns slowly from 1,400 8x8 images).
TEACHER_FLOOR = {"branchy": 0.8, "tiny_vit": 0.6, "Linear": 0.8}


@pytest.mark.parametrize("factory", ["branchy", "tiny_vit"])
def test_compress_a_model_of_ones_own_with_its_weights(nets, tmp_path, agent, monkeypatch, factory):
    """The user's trained weights are the teacher (loaded and evaluated, not retrained); keep 0.5
    + int8, distilled through the stage taps found; onnxruntime on the device agrees with torch."""
    from host.agent_client import AgentClient, AgentTarget
    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import layer_limits
    from host.compress.run import load_compress_config, run_compress
    from host.compress.train import accuracy, cache_dir
    from lut_store.precision import Precision

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    teacher, loaders = _trained_teacher(nets, factory, tmp_path)
    config_file = tmp_path / "compress.toml"
    kwargs = "factory_kwargs = { width = 16 }\n" if factory == "branchy" else ""
    config_file.write_text(
        f'model = "nets.py:{factory}"\nweights = "teacher.pt"\ninput_shape = [1, 8, 8]\n{kwargs}'
        '[data]\nname = "digits"\n[distill]\nepochs = 6\nlr = 1e-3\n'
    )
    config = load_compress_config(config_file)
    limits = layer_limits(teacher, torch.zeros((1, 1, 8, 8)))
    fixed = {lim.name: LayerAction(1.0, Precision.INT8) for lim in limits if lim.group is None}
    policy = Policy.uniform(f"nets.py:{factory}", [lim.name for lim in limits], 0.5, Precision.INT8, fixed)
    with AgentClient(AgentTarget(agent.address)) as client:
        summary = run_compress(config, policy, tmp_path / "out", progress=False, device=client)
    base, c = summary.baseline, summary.compressed
    assert base.test_accuracy == pytest.approx(accuracy(teacher, loaders.test))  # the given weights
    assert not cache_dir().exists() or not any(cache_dir().iterdir())  # nothing was trained or cached
    assert base.test_accuracy > TEACHER_FLOOR[factory]
    assert c.params_reduction > 0.3 and c.test_accuracy > base.test_accuracy - 0.15  # grouped-conv layers kept whole
    assert c.measured_latency.n >= 10 and c.speedup > 0
    assert abs(c.test_accuracy_onnxruntime - c.test_accuracy) <= 0.01
    assert summary.distill_loss[-1] < summary.distill_loss[0]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["weights"] == "teacher.pt"


@pytest.mark.parametrize("factory", ["branchy", "tiny_vit", "Linear"])  # Linear: nothing to prune
def test_a_two_episode_search_on_a_model_of_ones_own(nets, tmp_path, agent, monkeypatch, factory):
    from host.search.run import load_search_config, run_search

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    _trained_teacher(nets, factory, tmp_path)
    search = {"controllers": ["ppo"], "episodes": 2, "episode_samples": 256, "alternatives": []}
    config = load_search_config(
        None,
        {
            "model": f"nets.py:{factory}",
            "weights": "teacher.pt",
            "data": {"name": "digits"},
            "search": search,
            "final_distill": {"epochs": 2},
            "device": {"name": agent.address},
        },
    )
    summary = run_search(config, tmp_path / "run", progress=False)
    final = summary.controllers["ppo"]
    assert summary.baseline.test_accuracy > TEACHER_FLOOR[factory]  # the loaded teacher, evaluated
    assert abs(final.test_accuracy - final.test_accuracy_onnxruntime) <= 0.02
    assert final.measured_latency.median_ms > 0 and final.params <= summary.baseline.params
    rows = (tmp_path / "run" / "episodes.jsonl").read_text().splitlines()
    assert len(rows) == 2
    if factory == "Linear":  # precisions only
        assert {a.keep_ratio for a in final.policy.layers.values()} == {1.0}


def test_config_errors_for_a_model_of_ones_own(nets, tmp_path, agent, monkeypatch):
    from host.compress.policy import Policy
    from host.compress.run import load_compress_config, run_compress
    from lut_store.precision import Precision
    from lut_store.tomlfile import ConfigError

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    names = ["stem.0", "left.0", "right.0", "grouped.0", "se.reduce", "se.expand", "down.0", "head"]
    policy = Policy.uniform("nets.py:branchy", names, 1.0, Precision.FP32)

    def run(text: str) -> None:
        (tmp_path / "c.toml").write_text(text + '\n[data]\nname = "digits"\n')
        with AgentClient(AgentTarget(agent.address)) as client:
            run_compress(load_compress_config(tmp_path / "c.toml"), policy, tmp_path / "o", False, client)

    from host.agent_client import AgentClient, AgentTarget

    with pytest.raises(ConfigError, match=r"input_shape = \[3, 64, 64\], but the data digits gives .*\[1, 8, 8\]"):
        run('model = "nets.py:branchy"\ninput_shape = [3, 64, 64]')
    torch.save(build_model("nets.py:branchy", 10, (1, 8, 8), {"width": 8}).state_dict(), tmp_path / "w8.pt")
    with pytest.raises(CheckpointError, match="mis-shaped: stem.0.weight"):
        run('model = "nets.py:branchy"\nweights = "w8.pt"')
    torch.save(build_model("nets.py:branchy", 10, (1, 8, 8)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelError, match=r"kd_layers \['trunk'\] are not modules of nets.py:branchy"):
        run('model = "nets.py:branchy"\nweights = "w.pt"\nkd_layers = ["trunk"]\n[distill]\nepochs = 1')


def test_the_built_in_models_stage_taps_are_found_from_their_structure():
    """What the built-ins' hand-written tables were: found now, the same for any model."""
    for name, shape, taps in (
        ("resnet18", (3, 64, 64), ("layer1", "layer2", "layer3", "layer4")),
        ("mobilenetv2", (3, 64, 64), ("features.3", "features.6", "features.13", "features.18")),
        ("mlp", (30,), ("body",)),
    ):
        assert feature_taps(build_model(name, 6, shape), torch.zeros((1, *shape))) == taps


DATA = '''
import torch
from torch.utils.data import TensorDataset


def blobs(n=120, seed=0):
    """Three Gaussian blobs in 1x8x8 'images'."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5 + labels.float()[:, None, None, None]
    data = TensorDataset(x, labels)
    data.classes = ["low", "mid", "high"]
    cut = n // 5
    return data, TensorDataset(x[:cut], labels[:cut]), TensorDataset(x[cut : 2 * cut], labels[cut : 2 * cut])


def as_dict(n=60):
    train, val, test = blobs(n)
    return {"train": train, "val": val, "test": test}


def as_list():
    return list(blobs())


def empty_val():
    train, _, test = blobs()
    return train, TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), test


def ragged():
    train, val, _ = blobs()
    return train, val, TensorDataset(torch.zeros(4, 1, 4, 4), torch.zeros(4, dtype=torch.long))


def negative():
    train, val, test = blobs()
    return train, val, TensorDataset(torch.zeros(4, 1, 8, 8), -torch.ones(4, dtype=torch.long))
'''


def test_a_data_set_of_ones_own(tmp_path, monkeypatch):
    from host.data import DataConfig, DataError

    (tmp_path / "mydata.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    data = DataConfig(name="mydata.py:blobs", factory_kwargs={"n": 90}, seed=3).load()
    assert data.classes == ("low", "mid", "high") and data.input_shape == (1, 8, 8) and len(data.y_train) == 90
    assert data.x_train.dtype.name == "float32" and data.y_val.dtype.name == "int64" and len(data.y_test) == 18
    assert DataConfig(name="mydata.py:as_dict").load().classes == ("low", "mid", "high")
    again = DataConfig(name="mydata.py:blobs", factory_kwargs={"n": 90}, seed=3).load()
    assert again.cache_id == data.cache_id  # the baseline cache knows it again
    for name, message in (
        ("mydata.py:as_list", "returned a list; return \\(train, val, test\\) datasets or a dict"),
        ("mydata.py:empty_val", "the val split is empty"),
        ("mydata.py:ragged", "the splits' inputs differ in shape"),
        ("mydata.py:negative", r"test\[0\] has label -1; classes count from 0"),
        ("mydata.py:nothing", "mydata.py has no 'nothing'"),
    ):
        with pytest.raises(DataError, match=message):
            DataConfig(name=name).load()
    with pytest.raises(DataError, match="the factory raised TypeError: .*unexpected keyword argument 'm'"):
        DataConfig(name="mydata.py:blobs", factory_kwargs={"m": 1}).load()
    with pytest.raises(DataError, match="data set 'digits' takes no option m; options: seed"):
        DataConfig(name="digits", factory_kwargs={"m": 1}).load()


def test_a_transformer_of_ones_own_prunes_whole_heads_and_its_mlp(nets):
    groups, _, kept = _pruned(f"{nets}:tiny_vit", {})
    assert groups["encoders.0.attn.qkv"] == "encoders.0.attn.qkv" and groups["encoders.1.mlp.0"] == "encoders.1.mlp.0"
    model = build_model(f"{nets}:tiny_vit", 10, (1, 8, 8))
    assert feature_taps(model, torch.zeros((1, 1, 8, 8))) == ("encoders.0", "encoders.1", "encoders.2")
    from host.compress.apply import apply_policy, random_calibration
    from host.compress.policy import Policy
    from host.compress.prune import layer_limits
    from lut_store.precision import Precision

    limits = layer_limits(model, torch.zeros((1, 1, 8, 8)))
    fixed = {lim.name: 1.0 for lim in limits if lim.group is None}
    layers = {lim.name: fixed.get(lim.name, 0.5) for lim in limits}
    layers["encoders.1.attn.qkv"] = 0.3  # 4 heads at 0.3: one head, never none
    policy = Policy.uniform(f"{nets}:tiny_vit", list(layers), 1.0, Precision.INT8)
    policy = Policy(policy.model, {n: a.__class__(layers[n], Precision.INT8) for n, a in policy.layers.items()})
    apply_policy(model, policy, torch.zeros((1, 1, 8, 8)), 8, random_calibration((1, 8, 8)))
    heads = [e.attn.num_heads for e in model.encoders]
    assert heads == [2, 1, 2] and model.encoders[0].attn.qkv.out_features == 3 * 2 * 8
    assert model.encoders[0].mlp[0].out_features == 32 and kept < 0.5
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("precision", ["int8", "fp16", "int4"])
def test_the_built_in_vit_prunes_heads_exports_and_is_keyed(tmp_path, precision):
    import numpy as np
    import onnx
    import onnxruntime as ort

    from host.compress.apply import apply_policy, random_calibration
    from host.compress.export import export_policy_model
    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import count_params, layer_limits
    from lut_store.keys.graph import model_kernels
    from lut_store.precision import Precision

    model, example = build_model("vit", 6, (3, 64, 64)).eval(), torch.zeros((1, 3, 64, 64))
    assert feature_taps(model, example) == ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    limits = layer_limits(model, example)
    fixed = {lim.name: LayerAction(1.0, Precision(precision)) for lim in limits if lim.group is None}
    policy = Policy.uniform("vit", [lim.name for lim in limits], 0.5, Precision(precision), fixed)
    before = count_params(model)
    apply_policy(model, policy, example, 8, random_calibration((3, 64, 64)), exact_int8_weight_bits())
    block = model.blocks[0]
    assert (block.attn.num_heads, block.mlp[0].out_features, block.norm1.normalized_shape) == (2, 128, (64,))
    assert count_params(model) < 0.3 * before
    exported = export_policy_model(model.eval(), policy, tmp_path / "vit.onnx", (3, 64, 64))
    proto = onnx.load(exported.path)
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    if precision == "fp16":  # between two Casts
        assert sum("__fp16_" in n.input[0] for n in matmuls) == 16
    else:  # int8 or int4 weights through a DequantizeLinear
        assert sum(n.input[1].endswith("_weight_dq") for n in matmuls) == 16
    assert len(model_kernels(proto).kernels) > 0  # every kernel has a LUT key
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((32, 3, 64, 64)).astype(np.float32)
    torch_out, ort_out = model(torch.from_numpy(x)).detach().numpy(), session.run(None, {"input": x})[0]
    assert np.abs(ort_out - torch_out).max() < 0.05  # a few steps of the int8 output grid at most
    assert (ort_out.argmax(1) == torch_out.argmax(1)).mean() >= 0.9


def test_a_model_that_branches_on_its_data_cannot_be_exported_and_the_module_is_named(nets, tmp_path):
    from host.compress.export import ExportError, export_onnx

    model = build_model("nets.py:Gated", 10, (1, 8, 8))
    with pytest.raises(ExportError, match="module 'gate' branches on its input data"):
        export_onnx(model, tmp_path / "gated.onnx", (1, 8, 8))


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("nets.py:branchy", {"groups": 1}, (1, 8, 8)),
        ("nets.py:branchy", {"groups": 4}, (1, 8, 8)),
        ("nets.py:Shuffled", {}, (1, 8, 8)),
        ("nets.py:tiny_vit", {}, (1, 8, 8)),
        ("vit", {}, (3, 64, 64)),
    ],
)
def test_the_parameter_count_from_channels_matches_the_pruned_model(nets, name, kwargs, shape):
    """What size constraints bisect on (`ParamCounter`, from channel counts) against the model
    `prune` makes: grouped convolutions, whole heads and LayerNorms included."""
    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import count_params, layer_limits, prune
    from host.search.space import ParamCounter
    from lut_store.precision import Precision

    example = torch.zeros((1, *shape))
    model = build_model(name, 10, shape, kwargs)
    counter = ParamCounter(model, example)
    limits = layer_limits(model, example)
    for keep in (0.75, 0.5, 0.3):
        layers = {lim.name: LayerAction(1.0 if lim.group is None else keep, Precision.FP32) for lim in limits}
        policy = Policy(name, layers)
        pruned = prune(build_model(name, 10, shape, kwargs), policy, example).model
        assert counter(policy) == pytest.approx(count_params(pruned), rel=0.002 if name == "vit" else 0)
