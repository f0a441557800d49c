"""Progress: a tqdm bar on a terminal, one plain line per step (no escape codes) elsewhere."""
from __future__ import annotations

import io
import re

from r2t_plugin.progress import ProgressBar, is_terminal

ESCAPES = re.compile(r"\r|\x1b\[")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    assert not is_terminal(out)
    with ProgressBar(3, "fit run", "epoch", stream=out) as bar:
        assert not bar.live
        bar.step("loss 0.5")
        bar.step()
        bar.advance_to(2)  # no progress: no line
        bar.advance_to(3, "done")
    text = out.getvalue()
    assert not ESCAPES.search(text)
    lines = text.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"fit run: epoch 1/3: loss 0\.5 \(0:\d\d\)", lines[0])
    assert lines[1].startswith("fit run: epoch 2/3 (") and lines[2].startswith("fit run: epoch 3/3: done (")


def test_a_terminal_gets_a_bar() -> None:
    out = FakeTTY()
    with ProgressBar(4, "compare", "run", initial=1, stream=out) as bar:
        assert bar.live
        bar.step("abmil ok")
    text = out.getvalue()
    assert "\r" in text and "compare" in text and "abmil ok" in text and "2/4" in text


def test_disabled_writes_nothing() -> None:
    for out in (io.StringIO(), FakeTTY()):
        with ProgressBar(2, "x", "run", enabled=False, stream=out) as bar:
            bar.step("a")
        assert out.getvalue() == ""


def test_a_closed_stream_is_not_a_terminal() -> None:
    out = io.StringIO()
    out.close()
    assert not is_terminal(out)


def test_fit_logs_one_line_per_epoch(tmp_path, capsys) -> None:
    import torch

    from r2t_plugin import FeatureBag
    from r2t_plugin.plugins import create_aggregator
    from r2t_plugin.tasks import ClassificationTask
    from r2t_plugin.train import TrainConfig, fit

    torch.manual_seed(0)
    bags = [FeatureBag(torch.randn(5, 4), case_id=f"c{i}", label=i % 2) for i in range(6)]
    model = create_aggregator("mean", 4, 2, dim=8)
    fit(model, ClassificationTask(2), bags[:4], bags[4:], [], TrainConfig(epochs=3, num_threads=1), tmp_path / "run")
    err = capsys.readouterr().err
    assert not ESCAPES.search(err)
    lines = err.splitlines()
    assert [line.split(":")[1] for line in lines] == [" epoch 1/3", " epoch 2/3", " epoch 3/3"]
    assert all(line.startswith("fit run: ") and ", val_auc " in line for line in lines)
