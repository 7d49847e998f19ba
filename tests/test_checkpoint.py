"""checkpoint.py's output directories: atomic swap, stale temporaries, disk space, and SIGKILL end to end."""

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM

from nemocompress.checkpoint import (
    SafetensorsWriter,
    atomic_output_dir,
    list_tensors,
    remove_stale_temporaries,
)
from nemocompress.cli import main
from nemocompress.distill import TeacherCache
from nemocompress.errors import OutputError
from nemocompress.importance.artifact import ImportanceArtifact
from nemocompress.zoo import save_zoo_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_zoo_checkpoint("llama", tmp_path_factory.mktemp("ckpt") / "llama")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    source = "".join(p.read_text() for p in sorted((ROOT / "nemocompress").glob("*.py")))
    for i in range(4):
        (root / f"doc{i}.txt").write_text(source[i * len(source) // 4 : (i + 1) * len(source) // 4])
    return root


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.glob(f".{target.name}.*"))


def _prune(src, out, *extra) -> list[str]:
    return ["prune", str(src), "-o", str(out), "--importance", "magnitude",
            "--export-config", json.dumps({"hidden_size": 32}), *extra]  # fmt: skip


def _one_line_error(capsys) -> str:
    """The error line; the progress bars before it are tqdm's carriage-return lines."""
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    return errors[0]


# ---------------------------------------------------------------------- the swap


def test_failed_write_leaves_old_content_and_success_replaces_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(target, overwrite=True) as tmp:
            assert tmp.name == f".out.tmp-{os.getpid()}"
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert _leftovers(target) == []
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"], "owner file or old content left inside"
    assert _leftovers(target) == []


def test_overwrite_moves_old_aside_before_the_new_one_takes_its_name(tmp_path, monkeypatch):
    """Never delete-then-rename: the old directory is renamed away, the new one renamed in, then deleted."""
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    events = []
    rename, rmtree = Path.rename, shutil.rmtree
    monkeypatch.setattr(Path, "rename", lambda self, dst: events.append(("rename", self.name, Path(dst).name))
                        or rename(self, dst))  # fmt: skip
    monkeypatch.setattr(
        shutil, "rmtree", lambda p, **kw: events.append(("rmtree", Path(p).name)) or rmtree(p, **kw)
    )
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
        events.clear()
    pid = os.getpid()
    assert events == [
        ("rmtree", f".out.old-{pid}"),  # a leftover of this process, if any
        ("rename", "out", f".out.old-{pid}"),
        ("rename", f".out.tmp-{pid}", "out"),
        ("rmtree", f".out.old-{pid}"),
    ]
    assert (target / "b.txt").read_text() == "new" and _leftovers(target) == []


def test_kill_between_the_two_renames_restores_the_old_directory(llama, tmp_path, caplog):
    """A dead run left the previous checkpoint in .out.old-PID and its new one in .out.tmp-PID."""
    pid = _dead_pid()
    shutil.copytree(llama, tmp_path / f".out.old-{pid}")
    (tmp_path / f".out.tmp-{pid}").mkdir()
    (tmp_path / f".out.tmp-{pid}" / "config.json").write_text("{}")
    target = tmp_path / "out"
    with caplog.at_level(logging.WARNING, "nemocompress.checkpoint"):
        with pytest.raises(OutputError, match="already exists"):  # restored, so it is an existing output
            with atomic_output_dir(target):
                pass
    assert f"restored out from .out.old-{pid} (process {pid} is gone)" in caplog.text
    assert f"removed stale temporary directory .out.tmp-{pid} (process {pid} is gone)" in caplog.text
    assert _leftovers(target) == []
    assert list_tensors(target).keys() == list_tensors(llama).keys()
    AutoModelForCausalLM.from_pretrained(target)


# ---------------------------------------------------------------------- stale temporaries


def test_stale_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path, caplog):
    target = tmp_path / "out"
    target.mkdir()
    dead, live = _dead_pid(), os.getppid()
    for name in (f".out.tmp-{dead}", f".out.old-{dead}", f".out.tmp-{live}", f".out.tmp-{dead}9",
                 f".other.tmp-{dead}", f".out.tmp-{dead}x"):  # fmt: skip
        (tmp_path / name).mkdir()
    elsewhere = tmp_path / f".out.tmp-{dead}9"  # written by a run on another host of a shared filesystem
    (elsewhere / ".nemocompress-owner").write_text(json.dumps({"host": "another-host", "pid": dead * 10 + 9}))
    with caplog.at_level(logging.WARNING, "nemocompress.checkpoint"):
        removed = remove_stale_temporaries(target)
    assert sorted(p.name for p in removed) == [f".out.old-{dead}", f".out.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["out", f".out.tmp-{live}", f".out.tmp-{dead}9", f".other.tmp-{dead}", f".out.tmp-{dead}x"]
    )
    lines = caplog.text.strip().splitlines()
    assert len(lines) == 2 and all("(process" in line and "is gone)" in line for line in lines)
    assert remove_stale_temporaries(target) == [], "nothing more to remove"


# ---------------------------------------------------------------------- disk space


def _fake_free(monkeypatch, free: int) -> None:
    usage = SimpleNamespace(total=10**12, used=10**12 - free, free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)


def _cache_teacher(teacher, text, out) -> list[str]:
    flags = {"--teacher": teacher, "--data": text, "--seq-len": 32, "--samples": 32, "--eval-samples": 4}
    return ["cache-teacher", *(str(x) for item in flags.items() for x in item), "-o", str(out)]


@pytest.mark.parametrize("command", ["prune", "cache-teacher"])
def test_refused_when_the_disk_is_too_small_with_a_true_estimate(llama, text, tmp_path, monkeypatch, capsys,
                                                                 command):  # fmt: skip
    out = tmp_path / "out"
    argv = _prune(llama, out) if command == "prune" else _cache_teacher(llama, text, out)
    _fake_free(monkeypatch, 1000)
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert f"not enough free space for {out}" in err and "1,000 bytes are free" in err
    assert not out.exists() and _leftovers(out) == []
    needed = int(err.split("it needs about ")[1].split(" bytes")[0].replace(",", ""))
    monkeypatch.undo()
    assert main(argv) == 0
    written = sum(p.stat().st_size for p in out.iterdir())
    assert 0.9 * written < needed < 1.1 * written, (needed, written)  # the estimate is the output's size


def test_full_disk_mid_write_is_one_line_and_leaves_nothing(llama, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(_prune(llama, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(self, tensor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SafetensorsWriter, "write", full)
    assert main(_prune(llama, out, "--overwrite")) == 2
    err = _one_line_error(capsys)
    assert f"the disk filled up while writing {out}: it needs about " in err and "bytes are free" in err
    assert _leftovers(out) == [], "the temporary directory must be removed"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the previous output is untouched"


FULL_DISK = [
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)),
    # what safetensors 0.8.0's save_file raised on a full 64 KiB tmpfs (measured once by hand)
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
]


@pytest.mark.parametrize("error", FULL_DISK, ids=["ENOSPC", "EDQUOT", "safetensors"])
def test_scores_artifact_disk_errors(tmp_path, monkeypatch, error):
    artifact = ImportanceArtifact({"site": {"sum": torch.ones(1000)}}, {}, {})
    _fake_free(monkeypatch, 10)
    with pytest.raises(OutputError, match="needs about 4,256 bytes, 10 bytes are free"):
        artifact.save(tmp_path / "scores")
    monkeypatch.undo()

    def fail(tmp):
        raise error

    with pytest.raises(OutputError, match="disk filled up while writing"):
        artifact.save(tmp_path / "scores", also=fail)
    assert not (tmp_path / "scores").exists() and _leftovers(tmp_path / "scores") == []


# ---------------------------------------------------------------------- SIGKILL end to end


def _start_paused(argv: list[str], patch: str) -> subprocess.Popen:
    """Run ``nemocompress ARGV`` in a child whose ``patch`` prints PAUSED and sleeps; wait for PAUSED."""
    script = textwrap.dedent(
        """
        import sys, time
        import nemocompress.checkpoint as checkpoint
        def pause(*args, **kwargs):
            print("PAUSED", flush=True)
            time.sleep(300)
        {patch}
        from nemocompress.cli import main
        sys.exit(main({argv!r}))
        """
    ).format(patch=patch, argv=argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    for line in child.stdout:
        if line.strip() == "PAUSED":
            return child
    raise AssertionError(f"the child ended (status {child.wait()}) before reaching the pause")


def _kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL


def test_sigkill_during_prune_then_rerun(llama, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    patch = "checkpoint.SafetensorsWriter.write = pause  # killed in the middle of writing the weights"
    child = _start_paused(_prune(llama, out), patch)
    _kill(child)
    assert _leftovers(out) == [f".out.tmp-{child.pid}"] and not out.exists()
    with caplog.at_level(logging.WARNING, "nemocompress.checkpoint"):
        assert main(_prune(llama, out)) == 0
    assert (
        f"removed stale temporary directory .out.tmp-{child.pid} (process {child.pid} is gone)" in caplog.text
    )
    assert _leftovers(out) == [], "no stale temporary folder remains"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and list_tensors(out)


def test_sigkill_during_cache_teacher_overwrite_keeps_the_previous_cache(llama, text, tmp_path):
    out = tmp_path / "cache"
    base = _cache_teacher(llama, text, out)
    assert main([*base, "--top-k", "8"]) == 0
    before = TeacherCache(out)
    values, indices = before.topk("train", torch.tensor([0, 1]), 8)
    patch = "checkpoint.replace_dir = pause  # killed with the new cache complete, just before the swap"
    child = _start_paused([*base, "--top-k", "4", "--overwrite"], patch)
    assert (tmp_path / f".cache.tmp-{child.pid}" / "teacher_cache.json").is_file(), (
        "the new cache was written"
    )
    _kill(child)
    after = TeacherCache(out)  # intact and loadable
    assert after.meta == before.meta and after.meta["top_k"] == 8
    v, i = after.topk("train", torch.tensor([0, 1]), 8)
    assert torch.equal(v, values) and torch.equal(i, indices)
    assert [p.name for p in remove_stale_temporaries(out)] == [f".cache.tmp-{child.pid}"]
    assert _leftovers(out) == []


@pytest.mark.parametrize("when", ["start", "final save"])
def test_distill_refuses_a_disk_too_small_for_the_final_student(llama, text, tmp_path, monkeypatch, when):
    from nemocompress.distill import DistillConfig, distill

    config = DistillConfig(teacher=llama, student=llama, data=text, output_dir=tmp_path / "run", steps=1,
                           seq_len=32, batch_size=2, save_every=0, eval_every=0, progress=False)  # fmt: skip
    calls = []

    def usage(path):  # "final save": room at the start, full at the end
        calls.append(path)
        return SimpleNamespace(free=10**12 if when == "final save" and len(calls) == 1 else 1000)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    weights = sum(
        t.numel() * t.element_size() for t in AutoModelForCausalLM.from_pretrained(llama).parameters()
    )
    with pytest.raises(OutputError, match=f"final: it needs about {weights:,} bytes, 1,000 bytes are free"):
        distill(config)
    assert not (tmp_path / "run" / "final").exists() and _leftovers(tmp_path / "run" / "final") == []
    if when == "start":
        assert not (tmp_path / "run").exists(), "refused before anything is written"
    else:
        assert len(calls) == 2 and (tmp_path / "run" / "metrics.jsonl").exists(), "refused after training"
