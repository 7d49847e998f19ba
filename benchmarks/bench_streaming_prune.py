"""Peak memory and time of streaming checkpoint slicing vs load-slice-save, on a synthetic NemotronH.

Steps, each in a fresh subprocess so that every peak RSS belongs to one method only:

  write     writes a synthetic bf16 NemotronH checkpoint of at least ``--size-gb`` GiB in the
            ``save_pretrained`` key layout (``backbone.*``, one tensor per routed expert, router in float32),
            sharded at ``--shard-gb`` with ``model.safetensors.index.json``; the tensors are generated and
            written one shard at a time (the model is only built on the meta device, for names and shapes).
            It also makes the pruning plan (``plan_from_targets`` with seeded random scores) and saves it.
  streaming ``nemocompress.prune.slice.slice_checkpoint`` on the checkpoint
  baseline  ``AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)``, ``slice_model(model, plan)``,
            ``save_pretrained``; it also reports from_pretrained's missing / unexpected / mismatched keys
  compare   both outputs, tensor by tensor (safetensors ``safe_open``): same keys, dtypes, shapes and values

Memory is the child's ``getrusage(RUSAGE_SELF).ru_maxrss`` at its end and, as a cross-check, ``VmHWM`` from
``/proc/self/status``. The parent imports neither torch nor transformers: Linux carries the parent's RSS
high-water mark into a child's ``ru_maxrss`` at exec, so a heavy parent would inflate every child's number.
Both methods read a checkpoint that was just written, so it is likely in the page cache (page cache is not
RSS); ``disk read`` in the table is the child's ``/proc/self/io`` read_bytes (bytes that really hit the disk).

Target: streaming peak RSS < 1.5 x largest tensor + 300 MB (300e6 bytes).

Usage:
  python benchmarks/bench_streaming_prune.py                 # 4 GiB checkpoint in a temp dir, deleted after
  python benchmarks/bench_streaming_prune.py --check         # tiny model: layout loads cleanly + full pipeline
  python benchmarks/bench_streaming_prune.py --size-gb 8 --workdir /data/bench --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 2**20
GiB = 2**30
RESULT = "RESULT "

# A Nemotron-H-4B-like width (vocab 131072 so the embedding and lm_head are the largest tensors), with one
# MoE flavour (32 experts) so that routed experts are on disk too. Layers repeat PATTERN until the size is met.
PATTERN = ["mamba", "moe", "mamba", "attention", "mamba", "mlp"]
FULL = dict(
    vocab_size=131072, hidden_size=3072, head_dim=128, num_attention_heads=32, num_key_value_heads=8,
    intermediate_size=12288, mamba_num_heads=112, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
    chunk_size=128, n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=1024,
    moe_shared_expert_intermediate_size=2048, n_shared_experts=1, tie_word_embeddings=False,
)  # fmt: skip
FULL_TARGETS = dict(
    hidden_size=2560, mamba_num_heads=96, mamba_head_dim=56, ffn_hidden_size=9216, num_attention_heads=24,
    num_moe_experts=24, moe_ffn_hidden_size=768, moe_shared_expert_intermediate_size=1536,
)  # fmt: skip
TINY = dict(
    vocab_size=1024, hidden_size=128, head_dim=32, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=256, mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16,
    chunk_size=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
    moe_shared_expert_intermediate_size=128, n_shared_experts=1, tie_word_embeddings=False,
)  # fmt: skip
TINY_TARGETS = dict(
    hidden_size=96, mamba_num_heads=6, mamba_head_dim=12, ffn_hidden_size=192, num_attention_heads=2,
    num_moe_experts=3, moe_ffn_hidden_size=48, moe_shared_expert_intermediate_size=96,
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=4.0, help="minimum checkpoint size in GiB")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="maximum shard size in GiB")
    parser.add_argument("--workdir", default=None, help="where to write (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and both outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--check",
        action="store_true",
        help="tiny model instead: check that from_pretrained loads the synthetic layout with no missing, "
        "unexpected or mismatched keys and the same values, then run the whole pipeline",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- worker side (heavy imports here)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _io() -> dict[str, int]:
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    except OSError:
        return {}


class Meter:
    """RSS after imports, then peaks at the end of the worker."""

    def __init__(self):
        import resource

        self._resource = resource
        self.after_imports = {
            "rss_after_imports": _status_kib("VmRSS") * 1024,
            "maxrss_after_imports": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        }
        self.t0 = time.perf_counter()
        self.io0 = _io()

    def done(self, **extra) -> dict:
        io = _io()
        return {
            **self.after_imports,
            "wall_s": time.perf_counter() - self.t0,
            "peak_maxrss": self._resource.getrusage(self._resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_vmhwm": _status_kib("VmHWM") * 1024,
            "disk_read": io.get("read_bytes", 0) - self.io0.get("read_bytes", 0),
            "disk_write": io.get("write_bytes", 0) - self.io0.get("write_bytes", 0),
            **extra,
        }


def _config(args: argparse.Namespace, layers: list[str]):
    from transformers import AutoConfig

    return AutoConfig.for_model("nemotron_h", layers_block_type=layers, **(TINY if args.check else FULL))


def _meta_state(config) -> list[tuple[str, tuple[int, ...], object]]:
    """(name, shape, dtype) of every state-dict entry of the bf16 model, built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]


def _disk_layout(state) -> list[tuple[str, tuple[int, ...], object]]:
    """The save_pretrained layout: ``model.`` -> ``backbone.``, fused experts [E, ...] -> one tensor per expert."""
    out = []
    for name, shape, dtype in state:
        disk = "backbone." + name[len("model.") :] if name.startswith("model.") else name
        if disk.endswith((".mixer.experts.up_proj", ".mixer.experts.down_proj")):
            prefix, proj = disk.rsplit(".", 1)
            out += [(f"{prefix}.{e}.{proj}.weight", shape[1:], dtype) for e in range(shape[0])]
        else:
            out.append((disk, shape, dtype))
    return out


def _nbytes(shape, dtype) -> int:
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


def _choose_layers(args: argparse.Namespace) -> list[str]:
    """The shortest repetition of PATTERN (at least one of each kind) whose checkpoint reaches --size-gb."""
    if args.check:
        return list(PATTERN)
    probe = PATTERN * 20
    state = _meta_state(_config(args, probe))
    per_layer = [0] * len(probe)
    outer = 0
    for name, shape, dtype in state:
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            per_layer[int(parts[2])] += _nbytes(shape, dtype)
        else:
            outer += _nbytes(shape, dtype)
    total, n = outer, 0
    while n < len(PATTERN) or total < args.size_gb * GiB:
        if n == len(probe):
            raise SystemExit(f"--size-gb {args.size_gb} needs more than {len(probe)} layers")
        total += per_layer[n]
        n += 1
    return probe[:n]


def worker_write(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    from nemocompress.arch import get_adapter
    from nemocompress.importance.weights import random_scores
    from nemocompress.prune.minitron import plan_from_targets

    meter = Meter()
    layers = _choose_layers(args)
    config = _config(args, layers)
    tensors = _disk_layout(_meta_state(config))
    shard_bytes = int(args.shard_gb * GiB) if not args.check else 200 * 1024
    shards: list[list[tuple]] = [[]]
    size = 0
    for t in tensors:
        n = _nbytes(t[1], t[2])
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    config.architectures = ["NemotronHForCausalLM"]  # as save_pretrained writes it
    config.dtype = torch.bfloat16
    ckpt = work / "checkpoint"
    ckpt.mkdir(parents=True)
    gen = torch.Generator().manual_seed(args.seed)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        data = {}
        for name, shape, dtype in shard:
            data[name] = torch.randn(shape, generator=gen, dtype=dtype).mul_(0.02)
            weight_map[name] = file
            total += _nbytes(shape, dtype)
        save_file(data, str(ckpt / file), metadata={"format": "pt"})
        del data
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(ckpt)

    adapter = get_adapter(config)
    scores = random_scores([(a.name, a.size) for a in adapter.axes(config)], seed=args.seed)
    targets = TINY_TARGETS if args.check else FULL_TARGETS
    plan = plan_from_targets(config, targets, scores)
    plan.save(work / "plan.json")
    new_config = plan.apply_config(config)
    new_bytes = sum(_nbytes(s, d) for _, s, d in _disk_layout(_meta_state(new_config)))

    largest = max(tensors, key=lambda t: _nbytes(t[1], t[2]))
    kinds = {k: layers.count(k) for k in ("mamba", "attention", "mlp", "moe")}
    return meter.done(
        layers=len(layers),
        kinds=kinds,
        tensors=len(tensors),
        shards=len(shards),
        total_bytes=total,
        largest_name=largest[0],
        largest_shape=list(largest[1]),
        largest_bytes=_nbytes(largest[1], largest[2]),
        sliced_bytes=new_bytes,
        targets=targets,
        config={k: getattr(config, k) for k in (TINY if args.check else FULL)},
    )


def worker_streaming(args: argparse.Namespace, work: Path) -> dict:
    from nemocompress.prune.plan import Plan
    from nemocompress.prune.slice import slice_checkpoint

    meter = Meter()
    plan = Plan.load(work / "plan.json")
    slice_checkpoint(work / "checkpoint", plan, work / "out_streaming", progress=False)
    return meter.done()


def _check_loaded(model, ckpt: Path) -> int:
    """Count tensors of a from_pretrained model that differ from the synthetic files (expects 0)."""
    import torch
    from safetensors import safe_open

    from nemocompress.checkpoint import list_tensors

    state = model.state_dict()
    bad = 0
    for key, info in list_tensors(ckpt).items():
        name = "model." + key[len("backbone.") :] if key.startswith("backbone.") else key
        parts = name.split(".")
        expert = None
        if len(parts) > 5 and parts[3:5] == ["mixer", "experts"] and parts[5].isdigit():
            expert = int(parts[5])
            name = ".".join(parts[:5] + [parts[6]])
        with safe_open(str(info.file), "pt") as f:
            disk = f.get_tensor(key)
        mem = state[name] if expert is None else state[name][expert]
        if mem.dtype != disk.dtype or not torch.equal(mem, disk):
            print(f"loaded {name}[{expert}] differs from {key}", file=sys.stderr)
            bad += 1
    return bad


def worker_baseline(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from nemocompress.prune.plan import Plan
    from nemocompress.prune.slice import slice_model

    meter = Meter()
    plan = Plan.load(work / "plan.json")
    t = time.perf_counter()
    model, info = AutoModelForCausalLM.from_pretrained(
        work / "checkpoint", dtype=torch.bfloat16, output_loading_info=True
    )
    t_load = time.perf_counter() - t
    loaded_mismatch = _check_loaded(model, work / "checkpoint") if args.check else None
    t = time.perf_counter()
    sliced = slice_model(model, plan)
    t_slice = time.perf_counter() - t
    t = time.perf_counter()
    sliced.save_pretrained(work / "out_baseline")
    t_save = time.perf_counter() - t
    keys = {k: sorted(map(str, v)) for k, v in info.items() if k != "error_msgs"}
    return meter.done(
        load_s=t_load, slice_s=t_slice, save_s=t_save, loading_info=keys, loaded_mismatch=loaded_mismatch
    )


def worker_compare(args: argparse.Namespace, work: Path) -> dict:
    import torch
    from safetensors import safe_open

    from nemocompress.checkpoint import list_tensors

    meter = Meter()
    a, b = list_tensors(work / "out_streaming"), list_tensors(work / "out_baseline")
    common = sorted(set(a) & set(b))
    differ = []
    for key in common:
        with safe_open(str(a[key].file), "pt") as fa, safe_open(str(b[key].file), "pt") as fb:
            ta, tb = fa.get_tensor(key), fb.get_tensor(key)
        if ta.dtype != tb.dtype or ta.shape != tb.shape or not torch.equal(ta, tb):
            differ.append(key)
    cfg_a = json.loads((work / "out_streaming" / "config.json").read_text())
    cfg_b = json.loads((work / "out_baseline" / "config.json").read_text())
    cfg_diff = sorted(k for k in set(cfg_a) | set(cfg_b) if cfg_a.get(k) != cfg_b.get(k))
    return meter.done(
        compared=len(common),
        only_streaming=sorted(set(a) - set(b)),
        only_baseline=sorted(set(b) - set(a)),
        differ=differ,
        streaming_bytes=sum(i.nbytes for i in a.values()),
        baseline_bytes=sum(i.nbytes for i in b.values()),
        streaming_shards=len({i.file for i in a.values()}),
        baseline_shards=len({i.file for i in b.values()}),
        config_diff={k: [cfg_a.get(k), cfg_b.get(k)] for k in cfg_diff},
    )


WORKERS = {
    "write": worker_write,
    "streaming": worker_streaming,
    "baseline": worker_baseline,
    "compare": worker_compare,
}


# --------------------------------------------------------------------------- parent side (stdlib only)


def run_child(step: str, args: argparse.Namespace, work: Path) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", step, "--workdir", str(work)]
    argv += ["--size-gb", str(args.size_gb), "--shard-gb", str(args.shard_gb), "--seed", str(args.seed)]
    argv += ["--check"] if args.check else []
    print(f"[{step}] running ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout)
        raise SystemExit(f"[{step}] failed with exit status {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    out = json.loads(lines[-1][len(RESULT) :])
    out["process_s"] = wall
    print(f"[{step}] done in {wall:.1f} s", file=sys.stderr, flush=True)
    return out


def _mib(n: float) -> str:
    return f"{n / MiB:,.0f}" if abs(n) >= 10 * MiB else f"{n / MiB:.2f}"


def report(args: argparse.Namespace, w: dict, s: dict, b: dict, c: dict) -> bool:
    lines = []
    say = lines.append
    say(f"checkpoint: {w['total_bytes'] / GiB:.2f} GiB bf16 ({w['total_bytes'] / 1e9:.2f} GB), "
        f"{w['tensors']} tensors in {w['shards']} shards, {w['layers']} layers {w['kinds']}")  # fmt: skip
    say(f"largest tensor: {w['largest_name']} {w['largest_shape']} = {_mib(w['largest_bytes'])} MiB")
    say(f"plan targets: {w['targets']}")
    say(f"sliced checkpoint: {c['streaming_bytes'] / GiB:.2f} GiB "
        f"({w['sliced_bytes'] / GiB:.2f} GiB expected from the new config)")  # fmt: skip
    say("")
    say("| method | wall s (work) | wall s (process) | RSS after imports MiB | peak RSS MiB (ru_maxrss) "
        "| peak VmHWM MiB | peak - imports MiB | disk read MiB | disk write MiB |")  # fmt: skip
    say("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in (
        ("streaming (slice_checkpoint)", s),
        ("baseline (from_pretrained + slice_model + save)", b),
    ):
        say(f"| {name} | {r['wall_s']:.1f} | {r['process_s']:.1f} | {_mib(r['rss_after_imports'])} "
            f"| {_mib(r['peak_maxrss'])} | {_mib(r['peak_vmhwm'])} "
            f"| {_mib(r['peak_maxrss'] - r['rss_after_imports'])} | {_mib(r['disk_read'])} "
            f"| {_mib(r['disk_write'])} |")  # fmt: skip
    say("")
    say(f"streaming / baseline: time {s['wall_s'] / b['wall_s']:.2f}x (work), "
        f"{s['process_s'] / b['process_s']:.2f}x (process); peak RSS {s['peak_maxrss'] / b['peak_maxrss']:.2f}x")  # fmt: skip
    say(f"baseline split: from_pretrained {b['load_s']:.1f} s, slice_model {b['slice_s']:.1f} s, "
        f"save_pretrained {b['save_s']:.1f} s")  # fmt: skip
    info = b["loading_info"]
    clean = not any(info.values())
    say(f"from_pretrained loading info: {'no missing / unexpected / mismatched keys' if clean else info}")
    if b["loaded_mismatch"] is not None:
        say(f"loaded tensors equal to the synthetic files: {b['loaded_mismatch'] == 0} "
            f"({b['loaded_mismatch']} differ)")  # fmt: skip
    limit = 1.5 * w["largest_bytes"] + 300e6
    ok_mem = s["peak_maxrss"] < limit
    say(f"target: streaming peak RSS {_mib(s['peak_maxrss'])} MiB < 1.5 x {_mib(w['largest_bytes'])} MiB "
        f"+ 300 MB = {_mib(limit)} MiB: {'PASS' if ok_mem else 'FAIL'}")  # fmt: skip
    same = not (c["differ"] or c["only_streaming"] or c["only_baseline"])
    say(f"outputs identical: {'PASS' if same else 'FAIL'} ({c['compared']} tensors compared, "
        f"{len(c['differ'])} differ, {len(c['only_streaming'])} only in streaming, "
        f"{len(c['only_baseline'])} only in baseline; shards {c['streaming_shards']} vs {c['baseline_shards']})")  # fmt: skip
    for key in (c["differ"] + c["only_streaming"] + c["only_baseline"])[:10]:
        say(f"  e.g. {key}")
    if c["config_diff"]:
        say(f"config.json fields that differ (streaming, baseline): {c['config_diff']}")
    print("\n".join(lines))
    return ok_mem and same and clean and not b["loaded_mismatch"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args, Path(args.workdir))
        print(RESULT + json.dumps(result), flush=True)
        return 0

    own_tmp = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="bench_streaming_prune_") if own_tmp else args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    work = root if own_tmp else Path(tempfile.mkdtemp(prefix="run_", dir=root))
    free = shutil.disk_usage(root).free
    need = 0.05 * GiB if args.check else 2.6 * args.size_gb * GiB + 1 * GiB
    print(f"workdir {work}: {free / GiB:.1f} GiB free, about {need / GiB:.1f} GiB needed", file=sys.stderr)
    if free < need:
        raise SystemExit(f"not enough disk space in {root}: {free / GiB:.1f} GiB free, need {need / GiB:.1f}")
    try:
        w = run_child("write", args, work)
        print(f"[write] {w['total_bytes'] / GiB:.2f} GiB in {w['wall_s']:.1f} s", file=sys.stderr)
        s = run_child("streaming", args, work)
        b = run_child("baseline", args, work)
        c = run_child("compare", args, work)
        ok = report(args, w, s, b, c)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
