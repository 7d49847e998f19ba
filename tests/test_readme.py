"""The README stays true: its Python example runs, its command-line synopsis names existing flags."""

import re
from pathlib import Path

from nemocompress.zoo import save_zoo_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch):
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    save_zoo_checkpoint("llama", tmp_path / "model")
    (tmp_path / "calib.txt").write_text(
        "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}" for i in range(400))
    )
    monkeypatch.chdir(tmp_path)
    for placeholder, tiny in (
        ("path/to/model", str(tmp_path / "model")),
        ('{"hidden_size": 480}', '{"hidden_size": 48}'),
        ('{"ffn_hidden_size": 1024}', '{"ffn_hidden_size": 64}'),
        ("samples=32, seq_len=256", "samples=4, seq_len=16"),
        ("    ...", "    pass"),
        ('parse_count("90M")', 'parse_count("80K")'),
        ("api.SearchOptions(top_k=10)", "api.SearchOptions(top_k=2, seq_len=64, score_samples=2)"),
    ):
        assert placeholder in block, placeholder
        block = block.replace(placeholder, tiny)
    exec(compile(block, str(README), "exec"), {})
    assert (tmp_path / "scores" / "meta.json").is_file()
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out-ffn" / "config.json").is_file()
    assert (tmp_path / "plan.json").is_file()
    assert (tmp_path / "out-90m" / "search" / "report.json").is_file()


def test_command_line_synopsis_uses_existing_flags():
    from nemocompress.cli import build_parser

    block = re.search(r"## Command line\n\n```bash\n(.*?)```", README.read_text(), re.S).group(1)
    (commands,) = [a for a in build_parser()._actions if a.dest == "command"]
    for line in re.split(r"\n(?=nemocompress )", block.strip()):
        words = line.split()
        parser = commands.choices[words[1]]
        nested = [a for a in parser._actions if isinstance(a.choices, dict) and words[2] in a.choices]
        parser = nested[0].choices[words[2]] if nested else parser
        known = {flag for action in parser._actions for flag in action.option_strings}
        assert set(re.findall(r"(--[a-z][a-z0-9-]*)", line)) <= known, line.split("\n")[0]
