"""Where op keys come from; each module makes canonical `lut_store.opkey.OpKey`s.

- `ops`: one key from an op's parameters (`conv(NCHW(...), ConvSpec(...))`, `gemm`, pools, ...),
  for a kernel you can name: tests, probes, benchmarks, hand-made keys.
- `graph`: the kernels a whole ONNX model runs (in-model keys, as the runtime fuses them), and
  onnxruntime's optimized nodes attributed to them; host and agent both split models with it, so
  use it for anything that predicts or profiles a real model.
- `grid`: every combination of parameters listed in a TOML grid file (`hadmc lut build --grid`,
  the agent's nightly grids): a LUT over a parameter space.
- `sweep`: a model's layers, described at full width, under a sweep of channel widths
  (`hadmc lut build --model`): a LUT that any per-layer pruning policy of that model finds its
  kernels in.
"""
