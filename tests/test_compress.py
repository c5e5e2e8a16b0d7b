"""Policy, physical pruning, BN folding and fake quantization that exports as fusable QDQ."""

from __future__ import annotations

import collections

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from host.compress.export import export_onnx
from host.compress.fold import fold_batchnorm, recalibrate_batchnorm
from host.compress.policy import LayerAction, LayerLimits, Policy, PolicyError, validate
from host.compress.prune import count_params, layer_limits, prune, replay
from host.compress.quant import apply_fake_quant, runtime_arithmetic
from host.models import build_model
from lut_store.precision import Precision
from tests.helpers import exact_int8_weight_bits

EX = torch.zeros(1, 3, 64, 64)
RESNET_TAPS = ("layer1", "layer2", "layer3", "layer4")


def uniform(name: str, keep: float, precision: Precision, model=None) -> tuple[Policy, list]:
    model = model or build_model(name, 6, (3, 64, 64))
    limits = layer_limits(model, EX)
    head = [lim.name for lim in limits if lim.group is None]
    return Policy.uniform(
        name, [lim.name for lim in limits], keep, precision, {h: LayerAction(1.0, precision) for h in head}
    ), limits


def test_resnet18_has_the_papers_size_and_half_width_removes_three_quarters():
    model = build_model("resnet18", 6, (3, 64, 64))
    assert count_params(model) == 11_179_590
    policy, limits = uniform("resnet18", 0.5, Precision.FP32, model)
    validate(policy, "resnet18", limits)
    result = prune(model, policy, EX)
    assert result.params_after == 2_800_422  # -74.95%: the stem's input and the classifier's output keep their width
    assert model.layer1[0].conv1.out_channels == 32 and model.layer4[1].conv2.out_channels == 256
    assert model.fc.in_features == 256 and model.fc.out_features == 6
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6)


def test_residual_groups_prune_together_and_round_to_a_multiple():
    model = build_model("resnet18", 6, (3, 64, 64))
    limits = {lim.name: lim for lim in layer_limits(model, EX)}
    assert limits["layer1.0.conv2"].group == limits["conv1"].group  # joined by the residual add
    assert limits["layer1.0.conv1"].group != limits["conv1"].group
    policy, _ = uniform("resnet18", 1.0, Precision.FP32, model)
    layers = dict(policy.layers)
    layers["layer1.0.conv1"] = LayerAction(0.3, Precision.FP32)
    prune(model, Policy("resnet18", layers), EX, round_to=8)
    assert model.layer1[0].conv1.out_channels == 16  # 64 * 0.3 = 19.2 -> rounded to a multiple of 8
    assert model.layer1[0].conv2.in_channels == 16 and model.layer1[0].conv2.out_channels == 64


def test_mobilenetv2_prunes_and_runs():
    model = build_model("mobilenetv2", 6, (3, 64, 64))
    policy, limits = uniform("mobilenetv2", 0.5, Precision.FP32, model)
    validate(policy, "mobilenetv2", limits)
    result = prune(model, policy, EX)
    assert result.params_after < 0.5 * result.params_before
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6)


def test_small_groups_keep_round_to_channels_and_depthwise_convs_prune_with_their_group():
    """A keep-ratio that rounds a group below `round_to` keeps `round_to` channels (it used to
    leave the group whole); a depthwise conv is a member of its group, not a fixed width."""
    model = build_model("mobilenetv2", 6, (3, 64, 64))
    limits = {lim.name: lim for lim in layer_limits(model, EX)}
    depthwise = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(limits[n].group is not None for n in depthwise)
    policy, _ = uniform("mobilenetv2", 0.1, Precision.FP32, model)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    prune(model, policy, EX)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert after["features.0.0"] == 8 and before["features.0.0"] == 32  # 3.2 channels asked: 8 kept
    grouped = [n for n in after if limits[n].group is not None]
    assert all(after[n] == max(8, int(0.1 * before[n]) // 8 * 8) for n in grouped)  # 192 -> 16, 32 -> 8
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 6)
    odd = Policy("mobilenetv2", {**policy.layers, depthwise[0]: LayerAction(1.0, Precision.FP32)})
    with pytest.raises(PolicyError, match="prune the same channels"):
        validate(odd, "mobilenetv2", list(limits.values()))


def test_pruning_history_replays_on_a_fresh_model():
    model = build_model("resnet18", 6, (3, 64, 64))
    policy, _ = uniform("resnet18", 0.5, Precision.FP32, model)
    result = prune(model, policy, EX)
    fresh = replay(build_model("resnet18", 6, (3, 64, 64)), result.history, EX)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: Policy("mobilenetv2", p.layers), "not 'resnet18'"),
        (lambda p: Policy(p.model, {**p.layers, "layer9.conv": LayerAction()}), "unknown layers"),
        (lambda p: Policy(p.model, {k: v for k, v in p.layers.items() if k != "conv1"}), "no action for layers"),
        (
            lambda p: Policy(p.model, {**p.layers, "layer1.0.conv1": LayerAction(0.05, Precision.INT8)}),
            "layer1.0.conv1: keep_ratio",
        ),
        (
            lambda p: Policy(p.model, {**p.layers, "layer1.0.conv1": LayerAction(1.0, 3)}),
            "precision = 3 is not a Precision",
        ),
        (lambda p: Policy(p.model, {**p.layers, "fc": LayerAction(0.5, Precision.INT8)}), "width is fixed"),
        (
            lambda p: Policy(p.model, {**p.layers, "layer1.0.conv2": LayerAction(0.5, Precision.INT8)}),
            "same keep_ratio",
        ),
    ],
)
def test_policy_errors_name_the_layer(edit, message):
    policy, limits = uniform("resnet18", 1.0, Precision.INT8)
    with pytest.raises(PolicyError, match=message):
        validate(edit(policy), "resnet18", limits)


def test_policy_round_trips_through_json(tmp_path):
    policy, _ = uniform("resnet18", 0.5, Precision.INT8)
    path = tmp_path / "p.json"
    path.write_text(policy.to_json())
    assert Policy.load(path) == policy
    path.write_text('{"model": "resnet18"}')
    with pytest.raises(PolicyError, match="not a policy document"):
        Policy.load(path)


def test_folding_batchnorm_keeps_the_function():
    model = build_model("resnet18", 6, (3, 64, 64))
    model.train()
    model(torch.randn(8, 3, 64, 64))  # non-trivial running statistics
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    before = model(x)
    assert fold_batchnorm(model) == 20
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_batchnorm_recalibration_after_pruning_measures_the_pruned_network():
    """Pruning shifts what a BN sees; re-estimation gives each BN the mean and variance of its
    input over the batches seen (a cumulative average), and restores momentum and mode."""
    torch.manual_seed(0)
    model = build_model("resnet18", 6, (3, 64, 64))
    limits = layer_limits(model, torch.zeros(1, 3, 64, 64))
    prune(
        model,
        Policy.uniform("resnet18", [x.name for x in limits if x.group is not None], 0.5, Precision.FP32),
        torch.zeros(1, 3, 64, 64),
    )
    batches = [(torch.randn(16, 3, 64, 64) * 2 + 1, torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    seen_input: list[torch.Tensor] = []
    handle = model.bn1.register_forward_hook(lambda m, args, out: seen_input.append(args[0].detach()))
    model.eval()
    assert recalibrate_batchnorm(model, batches, batches=2) == 32
    handle.remove()
    x = torch.cat(seen_input)
    torch.testing.assert_close(model.bn1.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    per_batch = [b.var(dim=(0, 2, 3), unbiased=True) for b in seen_input]
    torch.testing.assert_close(model.bn1.running_var, sum(per_batch) / 2, rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and not model.training
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), batches) == 0


def test_int8_fake_quant_exports_as_qlinearconv_and_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 6, (3, 64, 64))
    policy, _ = uniform("resnet18", 0.5, Precision.INT8, model)
    prune(model, policy, EX)
    fold_batchnorm(model)
    apply_fake_quant(model, policy, exact_int8_weight_bits())
    # ReLUs the export keeps: the stem's feeds a max-pool, not an int8 layer; a block's is called twice.
    assert model.conv1.redundant_activation is None and model.layer1[0].conv1.redundant_activation is None
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 64, 64))
    model.eval()
    path, optimized = tmp_path / "q.onnx", tmp_path / "q_opt.onnx"
    export_onnx(model, path, (3, 64, 64))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    assert ops["QLinearConv"] == 20 and ops["QGemm"] == 1 and ops["Conv"] == 0
    x = torch.randn(4, 3, 64, 64)
    expected = model(x).detach().numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
    # The policy's export stores int8 weights as int8: its file is the effective size, within 10%.
    from host.compress.export import export_policy_model
    from host.compress.size import size_report

    stored = export_policy_model(model, policy, tmp_path / "policy.onnx", (3, 64, 64)).path.stat().st_size
    effective = size_report(model, policy, count_params(build_model("resnet18", 6, (3, 64, 64)))).effective_bytes
    assert abs(stored / effective - 1) < 0.10, (stored, effective)
    # With the runtime's arithmetic, torch computes the policy export's logits to the last bit
    # (residual sums and the average pool run in float in both).
    session = ort.InferenceSession(str(tmp_path / "policy.onnx"), options, providers=["CPUExecutionProvider"])
    x = torch.randn(32, 3, 64, 64)
    with torch.no_grad(), runtime_arithmetic(model):
        assert np.array_equal(model(x).numpy(), session.run(None, {"input": x.numpy()})[0])
    assert not model.conv1.runtime_exact  # only within


def test_7_bit_int8_weights_stay_within_64_levels_and_the_runtime_computes_them_exactly(tmp_path):
    """The remedy for int8 kernels that saturate pairs of products at int16 (x86 without VNNI):
    levels within [-64, 63], so 2 x 255 x 64 fits, stored as int8; torch's runtime arithmetic
    equals onnxruntime's to the last bit on any CPU."""
    from host.compress.apply import random_calibration, student_of
    from host.compress.export import export_policy_model
    from host.compress.quant import WeightFakeQuant

    w = torch.tensor([[1.0, -0.5, 0.26], [-2.0, 0.01, 1.0]])
    rows = torch.tensor([[1.0 / 63], [2.0 / 63]])
    assert torch.allclose(WeightFakeQuant(7)(w), torch.round(w / rows) * rows)
    torch.manual_seed(0)
    net = build_model("resnet18", 6, (3, 64, 64)).eval()
    policy, _ = uniform("resnet18", 0.5, Precision.INT8, net)
    student, _ = student_of(net, policy, EX, 8, random_calibration((3, 64, 64)), int8_weight_bits=7)
    path = export_policy_model(student.eval(), policy, tmp_path / "m.onnx", (3, 64, 64)).path
    levels = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer if t.name.endswith("_weight_q")]
    assert len(levels) == 21 and all(v.dtype == np.int8 and v.min() >= -64 and v.max() <= 63 for v in levels)
    assert max(int(np.abs(v).max()) for v in levels) >= 63  # the grid is used to its end
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(16, 3, 64, 64)
    with torch.no_grad(), runtime_arithmetic(student):
        assert np.array_equal(student(x).numpy(), session.run(None, {"input": x.numpy()})[0])


def test_mobilenetv2_int8_export_stores_int8_weights_and_onnxruntime_computes_what_torch_does(tmp_path):
    """Each tensor is quantized once (a ReLU6's output quantizer is its consumer's input quantizer),
    biases are int32 at s_x*s_w: the fused QLinearConv chain reproduces torch's levels up to float
    rounding (the earlier double quantization flipped over 10% of a projection's outputs), and to
    the last bit with the runtime's arithmetic."""
    from host.compress.export import export_policy_model

    torch.manual_seed(0)
    model = build_model("mobilenetv2", 6, (3, 64, 64))
    policy, _ = uniform("mobilenetv2", 0.75, Precision.INT8, model)
    prune(model, policy, EX)
    model.train()
    model(torch.randn(16, 3, 64, 64))  # non-trivial BN statistics to fold
    fold_batchnorm(model)
    apply_fake_quant(model, policy, exact_int8_weight_bits())
    block = model.features[2].block
    assert block[1][0].act_quant is block[0][0].out_quant and block[0][0].out_quant.bounds == (0.0, 6.0)
    assert block[2][0].act_quant is block[1][0].out_quant and block[2][0].out_quant.bounds[0] == float("-inf")
    assert not model.features[4].block[0][0].shares_input_quant  # a residual sum: quantized by its reader
    model.train()
    for _ in range(3):
        model(torch.randn(16, 3, 64, 64))
    model.eval()
    path, optimized = tmp_path / "q.onnx", tmp_path / "q_opt.onnx"
    export_policy_model(model, policy, path, (3, 64, 64))
    graph = onnx.load(path)
    inits = {t.name: t for t in graph.graph.initializer}
    dq = {n.output[0]: n for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    conv = next(n for n in graph.graph.node if n.op_type == "Conv")
    assert inits[dq[conv.input[1]].input[0]].data_type == onnx.TensorProto.INT8
    assert inits[dq[conv.input[2]].input[0]].data_type == onnx.TensorProto.INT32
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name.endswith("weight.original") for t in inits.values())
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    assert ops["QLinearConv"] == 52 and ops["QGemm"] == 1 and ops["Conv"] == 0
    # The ReLU6s the output quantizers enforce are left out: no float Clip between int8 convolutions
    # (with them, 35 Clips and 46 QuantizeLinear nodes ran in float). The last one stays: the float
    # average pool reads it.
    assert model.features[0][0].redundant_activation == "features.0.2"
    assert model.features[18][0].redundant_activation is None and ops["Clip"] == 1
    assert ops["QuantizeLinear"] <= 12 and ops["DequantizeLinear"] <= 17
    x = torch.randn(32, 3, 64, 64)
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        float_accumulation = model(x).numpy()
        with runtime_arithmetic(model):
            exact = model(x).numpy()
    # Float accumulation misses a level now and then (11 of 192 logits here); the runtime's does not.
    assert np.abs(got - float_accumulation).max() < 0.02 * np.abs(got).max()
    assert np.array_equal(got, exact)


def test_an_int8_transformer_differs_from_onnxruntime_only_where_float_kernels_do(tmp_path):
    """Token Linears (MatMulIntegerToFloat, then the bias in float) are emulated too; LayerNorm,
    Softmax and GELU run each framework's own float kernels, so a level still flips now and then."""
    from host.compress.apply import apply_policy, random_calibration
    from host.compress.export import export_policy_model
    from host.latency.variants import model_limits

    limits = model_limits("vit")
    policy = Policy("vit", {lim.name: LayerAction(1.0, Precision.INT8) for lim in limits})
    torch.manual_seed(0)
    model = build_model("vit", 6, (3, 64, 64)).eval()
    apply_policy(
        model, policy, torch.zeros((1, 3, 64, 64)), 8, random_calibration((3, 64, 64)), exact_int8_weight_bits()
    )
    model.eval()
    path = export_policy_model(model, policy, tmp_path / "vit.onnx", (3, 64, 64)).path
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        float_accumulation = model(x).numpy()
        with runtime_arithmetic(model):
            exact = model(x).numpy()
    assert (exact != got).sum() < (float_accumulation != got).sum() / 3  # 9 against 69 of 192 here


def test_weight_only_int4_and_fp16_fake_quant():
    model = build_model("resnet18", 6, (3, 64, 64))
    policy, _ = uniform("resnet18", 1.0, Precision.INT4W, model)
    apply_fake_quant(model, policy)
    w = model.layer1[0].conv1.weight
    levels = (w / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 7)).round()
    assert levels.min() >= -8 and levels.max() <= 7
    assert torch.allclose(w / (w.abs().amax(dim=(1, 2, 3), keepdim=True) / 7), levels, atol=1e-4)
    half, _ = uniform("resnet18", 1.0, Precision.FP16)
    m16 = apply_fake_quant(build_model("resnet18", 6, (3, 64, 64)), half)
    w16 = m16.conv1.weight
    assert torch.equal(w16, w16.half().float())


def test_each_granularity_quantizes_as_defined():
    """Closed forms: uniform (one max-abs scale), per-channel (one per row), learned (a trained
    scale per row, levels within +-7 at 4 bits), log (powers of two of the max-abs, signs kept)."""
    from host.compress.quant import LogWeightFakeQuant, WeightFakeQuant

    w = torch.tensor([[0.7, -0.35, 0.1, 0.0], [2.8, 1.4, -0.05, 0.3]])
    uniform_q = WeightFakeQuant(4, "uniform")(w)
    s = 2.8 / 7
    assert torch.allclose(uniform_q, torch.round(w / s).clamp(-8, 7) * s)
    per_channel = WeightFakeQuant(4, "per-channel")(w)
    rows = torch.tensor([[0.7 / 7], [2.8 / 7]])
    assert torch.allclose(per_channel, torch.round(w / rows) * rows)
    learned = WeightFakeQuant(4, "learned", w)
    assert torch.allclose(learned(w), per_channel)  # starts at max-abs
    with torch.no_grad():
        learned.learned_scale.copy_(torch.tensor([0.05, 0.1]))
    expected = torch.round(w / torch.tensor([[0.05], [0.1]])).clamp(-7, 7) * torch.tensor([[0.05], [0.1]])
    assert torch.allclose(learned(w), expected)  # sign-magnitude: never -8
    w.requires_grad_(True)
    learned(w).sum().backward()
    assert learned.learned_scale.grad is not None and learned.learned_scale.grad.abs().sum() > 0  # it trains
    log = LogWeightFakeQuant(4)  # s = 2.8, magnitudes 2.8 * 2^-k, k = 0..6
    q = log(w.detach())
    assert torch.allclose(q[1], torch.tensor([2.8, 1.4, -2.8 / 64, 2.8 / 8]))  # 0.05 -> 2^-6 (nearest in log2)
    assert torch.allclose(q[0], torch.tensor([0.7, -0.35, 2.8 / 32, 0.0]))  # 0.1 -> 2^-5; 0 stays 0
    book = log.codebook(w.detach())
    assert len(book) == 15 and all(bool((book - v).abs().min() < 1e-7) for v in q.flatten())
    with pytest.raises(ValueError, match="not a linear grid"):
        WeightFakeQuant(4, "log")


def test_fp8_rounds_each_channel_onto_e4m3_as_the_export_and_the_runtime_do():
    """Closed form: a row's max-abs maps to 448, E4M3's largest value; a ratio rounds to the nearest
    E4M3 value (3 mantissa bits: a spacing of 32 between 256 and 448, 2^-9 at the bottom of the
    subnormals), ties to even; numpy's ml_dtypes cast agrees bit for bit."""
    from host.compress.quant import Fp8WeightFakeQuant

    w = torch.tensor([[448.0, 300.0, -272.0, 1.0 / 1024], [2.0, -0.5, 0.01, 0.0]])
    q = Fp8WeightFakeQuant("per-channel")(w)
    assert q[0].tolist() == [448.0, 288.0, -256.0, 0.0]  # 300 -> 288; a tie (272) -> even (256); 2^-10 -> 0
    step = 2.0 / 448  # row 1: 2.0 -> 448; 0.01 -> 2.24 -> 2.25 (a spacing of 1/4 between 2 and 4)
    assert torch.allclose(q[1], torch.tensor([448.0, -112.0, 2.25, 0.0]) * step)
    x = torch.randn(64, 9) * 3
    fq = Fp8WeightFakeQuant("per-channel")
    scale = fq.scale(x).reshape(-1, 1)
    numpy_cast = (x / scale).numpy().astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert torch.equal(fq(x), torch.from_numpy(numpy_cast) * scale)
    one_scale = Fp8WeightFakeQuant("uniform")
    assert torch.equal(one_scale.scale(x), torch.full((64,), float(x.abs().max()) / 448))
    grad = torch.zeros_like(x, requires_grad=True)
    (fq(x + grad) * 2).sum().backward()
    assert torch.equal(grad.grad, torch.full_like(x, 2.0))  # straight through
    with pytest.raises(ValueError, match="fp8 takes uniform or per-channel"):
        Fp8WeightFakeQuant("log")


@pytest.mark.parametrize(
    ("precision", "granularity", "weight_type"),
    [
        (Precision.INT8, "uniform", onnx.TensorProto.INT8),
        (Precision.INT8, "learned", onnx.TensorProto.INT8),
        (Precision.INT4W, "uniform", onnx.TensorProto.INT4),
        (Precision.INT4W, "learned", onnx.TensorProto.INT4),
        (Precision.INT4W, "log", onnx.TensorProto.UINT4),
        (Precision.FP8, "uniform", onnx.TensorProto.FLOAT8E4M3FN),
        (Precision.FP8, "per-channel", onnx.TensorProto.FLOAT8E4M3FN),
    ],
)
def test_each_granularity_exports_what_torch_computes(tmp_path, precision, granularity, weight_type):
    """The exported file stores the low-bit weights (int8/int4 levels, float8 E4M3 values, or 4-bit
    codes into a log codebook) and onnxruntime computes what the fake-quantized torch model does; the kernels'
    keys say what runs (a log layer: a float kernel, its codebook folded at load)."""
    from host.compress.apply import random_calibration, student_of
    from host.compress.export import export_policy_model
    from lut_store.keys.graph import model_kernels

    torch.manual_seed(0)
    net = build_model("mlp", 3, (10,)).eval()
    example = torch.zeros((1, 10))
    names = [lim.name for lim in layer_limits(net, example)]
    policy = Policy("mlp", {n: LayerAction(1.0, precision, granularity) for n in names})
    student, _ = student_of(net, policy, example, 8, random_calibration((10,)))
    if granularity == "learned":  # a trained scale, off the max-abs one
        with torch.no_grad():
            for n in names:
                scale = dict(student.named_modules())[n].parametrizations.weight[0].learned_scale
                scale.mul_(0.8)
    path = tmp_path / "m.onnx"
    exported = export_policy_model(student.eval(), policy, path, (10,))
    graph = onnx.load(path)
    stored_as = "_weight_q" if precision is Precision.INT8 else f"_weight_{precision}"
    suffix = {"log": "_weight_codes"}.get(granularity, stored_as)
    stored = [t for t in graph.graph.initializer if t.name.endswith(suffix)]
    assert len(stored) == len(names) and {t.data_type for t in stored} == {weight_type}
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.dims == [256, 10] for t in graph.graph.initializer)
    if granularity == "uniform":  # one scale for the tensor
        scales = [t for t in graph.graph.initializer if t.name.endswith("weight_scale")]
        assert scales and all(list(t.dims) == [] for t in scales)
    x = torch.randn(16, 10)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = student(x).numpy()
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    anchors = set(exported.layer_nodes.values())
    runs = {k.key.precision for k in model_kernels(graph).kernels if k.name in anchors}
    assert runs == ({Precision.FP32} if granularity == "log" else {precision})


def test_a_granularity_the_precision_cannot_export_is_refused():
    limits = [LayerLimits("fc", 4, None)]
    validate(Policy("m", {"fc": LayerAction(1.0, Precision.INT4W, "log")}), "m", limits)
    with pytest.raises(
        PolicyError, match=r"granularity 'log' at int8; allowed there: \['uniform', 'per-channel', 'learned'\]"
    ):
        validate(Policy("m", {"fc": LayerAction(1.0, Precision.INT8, "log")}), "m", limits)
    with pytest.raises(PolicyError, match=r"granularity 'uniform' at fp16; allowed there: \['per-channel'\]"):
        validate(Policy("m", {"fc": LayerAction(1.0, Precision.FP16, "uniform")}), "m", limits)


def test_int8_calibration_needs_data_for_every_activation_quantizer():
    """An unset activation range is [0, 0]: every value would quantize to 0, so it is an error."""
    from host.compress.quant import calibrate

    model = build_model("mlp", 2, (30,))
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    apply_fake_quant(model, Policy.uniform("mlp", names, 1.0, Precision.INT8))
    data = torch.utils.data.TensorDataset(torch.randn(16, 30), torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one batch"):
        calibrate(model, 0, torch.utils.data.DataLoader(data, batch_size=8))
    with pytest.raises(ValueError, match="saw no data"):
        calibrate(model, 2, torch.utils.data.DataLoader(torch.utils.data.Subset(data, []), batch_size=8))
    calibrate(model, 2, torch.utils.data.DataLoader(data, batch_size=8))


def test_distillation_loss_in_closed_form():
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher || student), by hand for two classes."""
    from host.compress.distill import distillation_loss

    student, teacher, labels, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([1]), 2.0
    ce, kd = distillation_loss(student, teacher, labels, t)
    p_s = torch.softmax(student / t, dim=1)[0]
    p_t = torch.softmax(teacher / t, dim=1)[0]
    assert float(ce) == pytest.approx(float(-torch.log_softmax(student, dim=1)[0, 1]))
    assert float(kd) == pytest.approx(t**2 * float((p_t * (p_t / p_s).log()).sum()))
    assert float(distillation_loss(teacher, teacher, labels, t)[1]) == pytest.approx(0.0, abs=1e-6)


def test_distillation_reduces_the_loss_and_leaves_no_adapter_in_the_student():
    from host.compress.distill import DistillConfig, distill

    torch.manual_seed(0)
    teacher = build_model("resnet18", 6, (3, 64, 64))
    student = build_model("resnet18", 6, (3, 64, 64))
    student.load_state_dict(teacher.state_dict())
    policy, _ = uniform("resnet18", 0.5, Precision.INT8, student)
    prune(student, policy, EX)
    fold_batchnorm(student)
    apply_fake_quant(student, policy)
    names_before = {n for n, _ in student.named_modules()}
    data = torch.utils.data.TensorDataset(torch.randn(64, 3, 64, 64), torch.randint(0, 6, (64,)))
    report = distill(
        student,
        teacher,
        RESNET_TAPS,
        torch.utils.data.DataLoader(data, batch_size=32),
        DistillConfig(epochs=3, lr=1e-3),
    )
    assert report.epoch_loss[-1] < 0.9 * report.epoch_loss[0]
    assert report.epoch_feature[-1] < report.epoch_feature[0]
    assert {n for n, _ in student.named_modules()} == names_before
    assert all(not p.requires_grad for p in teacher.parameters())


def test_early_stopping_keeps_the_best_epochs_weights():
    """A scripted validation score: best at epoch 2, then two epochs without a gain stop the run
    after epoch 4 (patience 2), and the student holds epoch 2's weights."""
    from host.compress.distill import DistillConfig, distill

    torch.manual_seed(0)
    teacher = build_model("mlp", 3, (8,))
    student = build_model("mlp", 3, (8,))
    data = torch.utils.data.TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    scores, snapshots = iter([0.5, 0.8, 0.7, 0.8, 0.9]), []

    def score(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    loader = torch.utils.data.DataLoader(data, batch_size=16)
    report = distill(student, teacher, (), loader, DistillConfig(epochs=5, lr=1e-2, patience=2), score=score)
    assert report.epoch_score == [0.5, 0.8, 0.7, 0.8] and report.best_epoch == 2 and len(report.epoch_loss) == 4
    assert all(torch.equal(v, snapshots[1][k]) for k, v in student.state_dict().items())
    assert not all(torch.equal(v, snapshots[3][k]) for k, v in student.state_dict().items())
    with pytest.raises(ValueError, match="early stopping .* needs a validation score"):
        distill(student, teacher, (), loader, DistillConfig(epochs=2, patience=1))
    with pytest.raises(ValueError, match="patience = -1 not negative"):
        DistillConfig(patience=-1)


def test_stored_teacher_outputs_train_the_student_as_the_live_teacher_does():
    """Without augmentation the frozen teacher's outputs are computed once: same batches, same
    losses and weights as running it every batch; with augmentation stored outputs are refused."""
    import copy

    from host.compress.distill import DistillConfig, distill, distill_loader, with_teacher_outputs

    torch.manual_seed(0)
    teacher = build_model("resnet18", 6, (3, 64, 64)).eval()
    student = build_model("resnet18", 6, (3, 64, 64))
    policy, _ = uniform("resnet18", 0.5, Precision.FP32, student)
    prune(student, policy, EX)
    twin = copy.deepcopy(student)
    data = torch.utils.data.TensorDataset(torch.randn(48, 3, 64, 64), torch.randint(0, 6, (48,)))
    stored = with_teacher_outputs(teacher, RESNET_TAPS, data, batch_size=20)
    assert [tuple(t.shape[1:]) for t in stored.tensors[2:]] == [
        (6,),
        (64, 16, 16),
        (128, 8, 8),
        (256, 4, 4),
        (512, 2, 2),
    ]
    config = DistillConfig(epochs=2, lr=1e-3)
    live = distill(student, teacher, RESNET_TAPS, distill_loader(data, 16, seed=3), config)
    kept = distill(twin, teacher, RESNET_TAPS, distill_loader(stored, 16, seed=3), config)
    assert kept.epoch_loss == pytest.approx(live.epoch_loss, rel=1e-4)
    assert all(
        torch.allclose(a, b, atol=1e-4)
        for a, b in zip(student.state_dict().values(), twin.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="augmentation"):
        distill(twin, teacher, RESNET_TAPS, distill_loader(stored, 16, seed=3), DistillConfig(epochs=1, augment=True))
    assert with_teacher_outputs(teacher, RESNET_TAPS, data, max_bytes=1000) is data  # too big to store


def test_size_accounting_counts_each_layer_at_its_precisions_storage_bits():
    from host.compress.size import effective_bytes, size_report

    # 10 parameters: 3 int4 weights, 2 fp16 weights, 5 others at 32 bits = 204 bits -> 26 bytes.
    assert effective_bytes(10, [(Precision.INT4W, 3), (Precision.FP16, 2)]) == 26

    model = build_model("resnet18", 6, (3, 64, 64))
    baseline = count_params(model)
    policy, _ = uniform("resnet18", 0.5, Precision.INT8, model)
    prune(model, policy, EX)
    fold_batchnorm(model)
    apply_fake_quant(model, policy)
    report = size_report(model, policy, baseline)
    weights = sum(
        m.parametrizations.weight.original.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    others = report.params - weights  # folded biases stay at 32 bits
    assert report.effective_bytes == weights + 4 * others
    assert report.fp32_bytes == 4 * report.params and report.baseline_fp32_bytes == 4 * baseline
    assert 0.74 < report.params_reduction < 0.76 and report.compression > 0.93
    # A mix: each layer's weights at its precision's bits (int4, fp16, fp32), the rest at 32, rounded up to bytes.
    mlp = build_model("mlp", 2, (30,))
    linears = {n: m for n, m in mlp.named_modules() if isinstance(m, torch.nn.Linear)}
    precisions = dict(zip(linears, (Precision.INT4W, Precision.FP16, Precision.FP32), strict=False))
    mixed = Policy("mlp", {n: LayerAction(1.0, p) for n, p in precisions.items()})
    apply_fake_quant(mlp, mixed)
    total = count_params(mlp)
    numel = {
        n: (m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight).numel()
        for n, m in linears.items()
    }  # a 32-bit layer keeps a plain weight
    weight_bits = sum(p.weight_bits * numel[n] for n, p in precisions.items())
    weights = sum(numel.values())
    expected = (weight_bits + 32 * (total - weights) + 7) // 8
    assert size_report(mlp, mixed, total).effective_bytes == expected


def test_baseline_is_trained_once_then_cached_and_a_corrupt_checkpoint_is_named(tmp_path, monkeypatch):
    from host.compress.train import CheckpointError, TrainConfig, accuracy, baseline_path, trained_baseline

    monkeypatch.setenv("HADMC_HOME", str(tmp_path))
    torch.manual_seed(0)
    x = torch.randn(96, 30)
    y = (x[:, 0] > 0).long()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    config = TrainConfig(epochs=20, lr=1e-2)
    build = lambda: build_model("mlp", 2, (30,))  # noqa: E731
    model, cached = trained_baseline(build, "mlp", "toy", loader, config)
    assert not cached and accuracy(model, loader) > 0.9
    again, cached = trained_baseline(build, "mlp", "toy", loader, config)
    assert cached and accuracy(again, loader) == accuracy(model, loader)
    baseline_path("mlp", "toy", config, loader.batch_size).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="delete it to retrain"):
        trained_baseline(build, "mlp", "toy", loader, config)


def test_mixed_precision_export_runs_each_layer_at_its_precision(tmp_path):
    from host.compress.export import export_policy_model

    torch.manual_seed(0)
    model = build_model("resnet18", 6, (3, 64, 64))
    names = [lim.name for lim in layer_limits(model, EX)]
    mix = (Precision.INT4W, Precision.FP16, Precision.INT8, Precision.FP32, Precision.FP8)
    policy = Policy("resnet18", {n: LayerAction(1.0, mix[i % 5]) for i, n in enumerate(names)})
    fold_batchnorm(model)
    apply_fake_quant(model, policy)
    model.train()
    model(torch.randn(8, 3, 64, 64))
    model.eval()
    path = tmp_path / "mixed.onnx"
    exported = export_policy_model(model, policy, path, (3, 64, 64))
    assert exported.layers_per_precision == {
        Precision.INT4W: 5,
        Precision.INT8: 4,
        Precision.FP16: 4,
        Precision.FP32: 4,
        Precision.FP8: 4,
        Precision.BF16: 0,
    }
    graph = onnx.load(path)
    # Every layer is named by its compute node: the one reading the layer's weight, whatever its precision.
    compute = {n.name: n.op_type for n in graph.graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(exported.layer_nodes) == set(names) and len(set(exported.layer_nodes.values())) == len(names)
    assert all(compute.get(node) in ("Conv", "Gemm") for node in exported.layer_nodes.values())
    assert compute[exported.layer_nodes["fc"]] == "Gemm"
    types = collections.Counter(t.data_type for t in graph.graph.initializer)
    assert types[onnx.TensorProto.INT4] == 5 and graph.opset_import[0].version == 21
    assert types[onnx.TensorProto.FLOAT8E4M3FN] == 4
    assert types[onnx.TensorProto.FLOAT16] >= 4
    assert sum(n.op_type == "Cast" and n.name.endswith(("_to_fp16", "_to_fp32")) for n in graph.graph.node) == 2 * 4
    assert model.conv1.weight.shape == (64, 3, 7, 7)  # the torch model is left as it was
    x = torch.randn(4, 3, 64, 64)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    expected = model(x).detach().numpy()
    assert np.abs(got - expected).max() < 0.02 * np.abs(expected).max()


def test_augmentation_keeps_shapes_and_passes_tables_through():
    from host.compress.train import augment_images

    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    outs = [augment_images(x, g) for _ in range(8)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)
    table = torch.randn(4, 30)
    assert augment_images(table, g) is table
