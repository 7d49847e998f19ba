"""nemocompress.demo on a stand-in for SmolLM2 (a zoo Llama) and the zoo text, offline."""

import pytest

from nemocompress import api, assets
from nemocompress.cli import main
from nemocompress.zoo import save_zoo_checkpoint, zoo_text

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    parent = save_zoo_checkpoint("llama", tmp_path / "parent")
    text = tmp_path / "text.txt"
    text.write_text(zoo_text(num_documents=30))
    monkeypatch.setattr(assets, "fetch_smollm2", lambda: parent)
    monkeypatch.setattr(assets, "fetch_text", lambda name: text)
    monkeypatch.setattr(assets, "cache_root", lambda: tmp_path / "cache")
    return tmp_path


def test_demo_compresses_and_shows_parent_pruned_and_distilled(stand_in, capsys):
    args = ["demo", "--export-config", '{"hidden_size": 32}', "--kd-steps", "3", "--samples", "4"]
    assert main([*args, "--seq-len", "32"]) == 0  # the run directory in the cache, as `nemocompress demo`
    printed = capsys.readouterr().out
    assert "compressed model" in printed and "The capital of France is" in printed
    # the Python API reads the finished run back (resume redoes nothing)
    result = api.demo(export_config={"hidden_size": 32}, samples=4, seq_len=32, kd_steps=3, resume=True)
    assert result.compress.output_dir == (stand_in / "cache" / "demo" / "smollm2-135m-compressed").resolve()
    rows = {row[0]: row[1:] for row in result.rows}
    assert list(rows) == ["parent", "pruned", "distilled"]
    models = result.compress.report["models"]
    assert models["pruned"]["metrics"]["params"] < models["parent"]["metrics"]["params"]
    assert float(rows["parent"][4]) == 0 < float(rows["pruned"][4])  # KL to the parent
    loss, bpb = float(rows["parent"][2]), float(rows["parent"][3])
    assert loss > 0 and bpb > loss  # 1 byte per token: bpb = loss / ln 2
    assert "bits per byte" in result.table() and result.table() in printed
    assert (result.compress.model_dir / "config.json").is_file()
