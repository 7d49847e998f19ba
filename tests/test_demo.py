"""nemocompress.demo on a stand-in for SmolLM2 (a zoo Llama) and the zoo text, offline."""

import pytest

from nemocompress import api, assets
from nemocompress.cli import main
from nemocompress.zoo import save_zoo_checkpoint, zoo_text


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    parent = save_zoo_checkpoint("llama", tmp_path / "parent")
    text = tmp_path / "text.txt"
    text.write_text(zoo_text(num_documents=10))
    monkeypatch.setattr(assets, "fetch_smollm2", lambda: parent)
    monkeypatch.setattr(assets, "fetch_text", lambda name: text)
    monkeypatch.setattr(assets, "cache_root", lambda: tmp_path / "cache")
    return tmp_path


def test_demo_prunes_and_compares_with_the_one_evaluation(stand_in):
    result = api.demo(export_config={"hidden_size": 32}, samples=4, seq_len=32, progress=False)
    rows = {row[0]: row[1:] for row in result.rows}
    assert result.prune.output_dir == stand_in / "cache" / "demo" / "smollm2-135m-pruned"
    assert result.prune.after.params < result.prune.before.params
    assert float(rows["KL to SmolLM2-135M (nats/token)"][1]) > 0
    assert 0 <= float(rows["top-1 agreement"][1]) <= 1
    loss, bpb = rows["held-out loss (nats/token)"], rows["bits per byte"]
    assert float(loss[0]) > 0 and float(bpb[0]) > float(loss[0])  # 1 byte per token: bpb = loss / ln 2
    assert "top-1 agreement" in result.table()


def test_demo_command(stand_in, capsys):
    args = ["demo", "--export-config", '{"hidden_size": 32}', "--importance", "magnitude", "--samples", "2"]
    assert main([*args, "--seq-len", "32", "-o", str(stand_in / "out")]) == 0
    assert "pruned checkpoint" in capsys.readouterr().out and (stand_in / "out" / "config.json").is_file()
