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

import pytest
import torch

from host.compress.distill import feature_taps
from host.compress.train import CheckpointError, load_weights
from host.models import ModelError, build_model, model_id

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


def test_layers_through_a_grouped_convolution_are_kept_whole_not_mangled(nets):
    groups, widths, _ = _pruned(f"{nets}:branchy", {"width": 16, "groups": 4})
    whole = ("left.0", "right.0", "grouped.0", "se.expand")  # the concatenation feeds the grouped conv
    assert all(groups[n] is None for n in whole) and all(groups[n] == n for n in ("stem.0", "se.reduce", "down.0"))
    assert [widths[n] for n in whole] == [16, 16, 32, 32] and widths["stem.0"] == 8 and widths["down.0"] == 32


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
        ("resnet19", {}, "unknown model 'resnet19'; choices: mlp, mobilenetv2, resnet18, or your own"),
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


def test_compress_a_model_of_ones_own_with_its_weights(nets, tmp_path, agent, monkeypatch):
    """The user's trained weights are the teacher (loaded and evaluated, not retrained); keep 0.5
    + int8, distilled through the stage taps found; onnxruntime on the device agrees with torch."""
    from host.agent_client import AgentClient, AgentTarget
    from host.compress.policy import LayerAction, Policy
    from host.compress.prune import layer_limits
    from host.compress.run import load_compress_config, run_compress
    from host.compress.train import TrainConfig, accuracy, cache_dir, train
    from host.data import DataConfig, make_loaders
    from lut_store.precision import Precision

    monkeypatch.setenv("HADMC_HOME", str(tmp_path / "home"))
    data = DataConfig(name="digits").load()
    loaders = make_loaders(data, batch_size=64, seed=0)
    torch.manual_seed(0)
    teacher = build_model(f"{nets}:branchy", 10, (1, 8, 8))
    train(teacher, loaders.train, TrainConfig(epochs=6, lr=3e-3))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    config_file = tmp_path / "compress.toml"
    config_file.write_text(
        'model = "nets.py:branchy"\nweights = "teacher.pt"\ninput_shape = [1, 8, 8]\n'
        'factory_kwargs = { width = 16 }\n[data]\nname = "digits"\n[distill]\nepochs = 6\nlr = 1e-3\n'
    )
    config = load_compress_config(config_file)
    assert config.factory_kwargs == {"width": 16}  # a TOML table, values kept as written
    limits = layer_limits(teacher, torch.zeros((1, 1, 8, 8)))
    fixed = {lim.name: LayerAction(1.0, Precision.INT8) for lim in limits if lim.group is None}
    policy = Policy.uniform("nets.py:branchy", [lim.name for lim in limits], 0.5, Precision.INT8, fixed)
    with AgentClient(AgentTarget(agent.address)) as client:
        summary = run_compress(config, policy, tmp_path / "out", progress=False, device=client)
    base, c = summary.baseline, summary.compressed
    assert base.test_accuracy == pytest.approx(accuracy(teacher.eval(), loaders.test))  # the given weights
    assert not cache_dir().exists() or not any(cache_dir().iterdir())  # nothing was trained or cached
    assert base.test_accuracy > 0.8
    assert abs(c.test_accuracy_onnxruntime - c.test_accuracy) <= 0.01
    assert c.params_reduction > 0.3 and c.test_accuracy > base.test_accuracy - 0.1  # grouped-conv layers kept whole
    assert c.measured_latency.n >= 10 and c.speedup > 0
    assert summary.distill_loss[-1] < summary.distill_loss[0]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["weights"] == "teacher.pt"


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
