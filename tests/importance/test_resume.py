"""An interrupted calibration resumes from its saved sums and ends with the scores of an uninterrupted run."""

import pytest
import torch

from nemocompress import api
from nemocompress.arch import get_adapter
from nemocompress.cli import main
from nemocompress.importance.artifact import ScoresError
from nemocompress.importance.calibrate import CalibrationCheckpoint, calibrate
from nemocompress.zoo import save_zoo_checkpoint, zoo_model

SAMPLES = torch.randint(2, 98, (8, 24), generator=torch.Generator().manual_seed(0))
SETTINGS = dict(batch_size=2, block_sizes=(1, 2), progress=False)  # 4 batches x 3 phases = 12 steps


class Interrupted(Exception):
    pass


def _interrupt_after(model, calls: int):
    """Make the first decoder layer raise on its ``calls + 1``-th call (as a kill would stop the run)."""
    count = [0]

    def hook(module, args):
        count[0] += 1
        if count[0] > calls:
            raise Interrupted

    return model.model.layers[0].register_forward_pre_hook(hook)


# In the 6-layer zoo hybrid, layer 0 runs once per batch in the width pass, 1 + 6 times per batch with 1-layer
# windows and 1 + 5 times with 2-layer ones: interrupted in the width pass, in the 1-layer windows (after 2 of
# their 4 batches), in the 2-layer windows (after 3).
@pytest.mark.parametrize(("calls", "steps_done"), [(2, 2), (20, 6), (50, 11)])
def test_interrupted_calibration_resumes_to_the_same_sums(tmp_path, calls, steps_done):
    model = zoo_model("nemotron_h-hybrid")
    adapter = get_adapter(model.config)
    expected = calibrate(model, adapter, SAMPLES, **SETTINGS)
    checkpoint = CalibrationCheckpoint(tmp_path / "partial", {"run": 1}, every_s=0)
    hook = _interrupt_after(model, calls)
    with pytest.raises(Interrupted):
        calibrate(model, adapter, SAMPLES, **SETTINGS, checkpoint=checkpoint)
    hook.remove()
    assert checkpoint.load()[0] == steps_done
    resumed = calibrate(model, adapter, SAMPLES, **SETTINGS, checkpoint=checkpoint)
    assert resumed.stats.keys() == expected.stats.keys() and resumed.layers.keys() == expected.layers.keys()
    for key, stats in expected.stats.items():
        for name, value in stats.items():
            torch.testing.assert_close(resumed.stats[key][name], value, rtol=1e-12, atol=1e-12)
    for window, stats in expected.layers.items():
        for name, value in stats.items():
            torch.testing.assert_close(resumed.layers[window][name], value, rtol=1e-12, atol=1e-12)
    with pytest.raises(ScoresError, match="another model, data or settings"):
        CalibrationCheckpoint(tmp_path / "partial", {"run": 2}).load()


def test_cli_resume_overwrite_and_refusal(tmp_path, capsys, monkeypatch):
    save_zoo_checkpoint("nemotron_h-hybrid", tmp_path / "model")
    data = tmp_path / "text.txt"
    data.write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(300))
    )
    args = ["importance", str(tmp_path / "model"), "--data", str(data), "--samples", "4", "--seq-len", "16"]
    out, partial = tmp_path / "scores", tmp_path / ".scores.partial"
    original = api.calibrate

    def killed(*a, checkpoint, **k):  # saves after every batch, then dies in the layer pass
        checkpoint.every_s = 0
        _interrupt_after(a[0], 3)
        return original(*a, checkpoint=checkpoint, **k)

    monkeypatch.setattr(api, "calibrate", killed)
    with pytest.raises(Interrupted):
        main([*args, "-o", str(out)])
    monkeypatch.setattr(api, "calibrate", original)
    assert partial.is_dir() and not out.exists()
    assert main([*args, "-o", str(out)]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err
    assert main([*args, "--seed", "1", "-o", str(out), "--resume"]) == 2  # other data: refused
    assert "another model, data or settings" in capsys.readouterr().err
    assert main([*args, "-o", str(out), "--resume"]) == 0
    assert out.is_dir() and not partial.exists()
    fresh = tmp_path / "fresh"
    assert main([*args, "-o", str(fresh)]) == 0
    resumed, uninterrupted = (
        api.load_importance(out, tmp_path / "model"),
        api.load_importance(fresh, tmp_path / "model"),
    )
    for key, value in uninterrupted.unit_scores().items():
        torch.testing.assert_close(resumed.unit_scores()[key], value)
    torch.testing.assert_close(resumed.layer_scores()["nmse"], uninterrupted.layer_scores()["nmse"])
