"""`hadmc compress` and `hadmc policy init` as users run them: bad input fails fast and clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def hadmc(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HADMC_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "host.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=env)


def test_policy_init_writes_a_valid_uniform_policy(tmp_path):
    out = tmp_path / "p.json"
    result = hadmc("policy", "init", "--model", "resnet18", "--keep", "0.5", "--bits", "8", "--edge-bits", "32",
                   "-o", str(out), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    layers = json.loads(out.read_text())["layers"]
    assert len(layers) == 21 and layers["layer2.0.conv1"] == {"bits": 8, "granularity": "per-channel",
                                                              "keep_ratio": 0.5}
    assert layers["conv1"]["bits"] == 32 and layers["fc"] == {"bits": 32, "granularity": "per-channel",
                                                               "keep_ratio": 1.0}


@pytest.mark.parametrize("edit, message", [
    (lambda doc: {**doc, "model": "mobilenetv2"}, "the policy is for model 'mobilenetv2', not 'resnet18'"),
    (lambda doc: {**doc, "layers": {**doc["layers"], "layer9.conv": {"keep_ratio": 1.0, "bits": 8}}},
     "unknown layers ['layer9.conv']"),
    (lambda doc: {"model": "resnet18"}, "not a policy document"),
])
def test_bad_policies_fail_before_any_training(tmp_path, edit, message):
    policy = tmp_path / "p.json"
    assert hadmc("policy", "init", "-o", str(policy), tmp_path=tmp_path).returncode == 0
    policy.write_text(json.dumps(edit(json.loads(policy.read_text()))))
    result = hadmc("compress", "--policy", str(policy), "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "home" / "baselines").exists()


def test_unknown_config_key_and_unknown_data_set(tmp_path):
    policy = tmp_path / "p.json"
    hadmc("policy", "init", "-o", str(policy), tmp_path=tmp_path)
    config = tmp_path / "c.toml"
    config.write_text('modle = "resnet18"\n')
    result = hadmc("compress", "--config", str(config), "--policy", str(policy), "--out", str(tmp_path / "o"),
                   tmp_path=tmp_path)
    assert result.returncode == 1 and "unknown config key 'modle'; did you mean 'model'?" in result.stderr
    config.write_text('[data]\nname = "imagenet"\n')
    result = hadmc("compress", "--config", str(config), "--policy", str(policy), "--out", str(tmp_path / "o"),
                   tmp_path=tmp_path)
    assert result.returncode == 1 and "imagenet" in result.stderr and "synthetic-neu-det" in result.stderr
