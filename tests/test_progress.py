"""Progress on stderr: a live bar on a terminal, lines that stay everywhere, nothing under --json."""

from __future__ import annotations

import io

import torch
from torch.utils.data import DataLoader, TensorDataset

from host.compress.train import TrainConfig, train
from host.models import build_model
from host.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(progress: Progress, epochs: int = 2) -> None:
    data = TensorDataset(torch.randn(40, 30), torch.randint(0, 2, (40,)))
    train(
        build_model("mlp", 2, (30,)),
        DataLoader(data, batch_size=8),
        TrainConfig(epochs=epochs),
        progress.fit("baseline"),
    )


def test_a_terminal_gets_a_live_bar_per_batch_and_a_line_per_epoch():
    stream = Terminal()
    shown = Progress(True, stream)
    shown.context = "[ppo] episode 3/15 (best 1.2345)"
    _fit(shown)
    text = stream.getvalue()
    assert "\r[ppo] episode 3/15 (best 1.2345): baseline epoch 1/2 [" in text
    assert "5/5 batches" in text and "\x1b[K" in text
    lines = [line.split("\r")[-1].replace("\x1b[K", "") for line in text.split("\n") if "loss" in line]
    assert [line.split(":")[0].strip() for line in lines] == ["baseline epoch 1/2", "baseline epoch 2/2"]


def test_a_log_file_gets_only_the_lines_and_json_mode_nothing():
    stream = io.StringIO()
    _fit(Progress(True, stream))
    text = stream.getvalue()
    assert "\r" not in text and "[" not in text
    assert text.count("\n") == 2 and "baseline epoch 2/2: loss" in text
    quiet = io.StringIO()
    _fit(Progress(False, quiet))
    assert quiet.getvalue() == ""


def test_live_only_fits_leave_no_line_behind():
    stream = Terminal()
    shown = Progress(True, stream)
    data = TensorDataset(torch.randn(16, 30), torch.randint(0, 2, (16,)))
    train(
        build_model("mlp", 2, (30,)),
        DataLoader(data, batch_size=8),
        TrainConfig(epochs=1),
        shown.fit("fine-tune", lines=False),
    )
    shown.say("[ppo] episode 1/2: reward 1.0")
    assert stream.getvalue().endswith("\r\x1b[K[ppo] episode 1/2: reward 1.0\n")
    assert stream.getvalue().count("\n") == 1
