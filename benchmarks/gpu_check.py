"""Speed and health check of the pr198 and frontier shapes on one GPU (synthetic tokens, nothing downloaded).

    bash benchmarks/gpu_check.sh                              # on the GPU machine (how: see gpu_check.sh)
    PGOLF_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh        # tiny shapes on CPU: does it run?

Every row is printed as soon as it is measured ("row: measure | value | target or note | met?"),
then the whole table, so a run stopped early still reports what it got. Measured, in one process:
the bf16 matmul peak; per preset, training steps of 8 micro-steps of 48 x 2048 tokens (what
`pgolf train` runs on one GPU: the tokens of the 8-GPU reference's step and its share of Muon
work per micro-step) with bf16 autocast and torch.compile, `frontier` before and after its layer
loop switches on; the graphs a training step and an evaluation step compile to and their graph
breaks (`torch._dynamo.explain` of the model's forward), graphs compiled while timed (should be
0); host syncs in a `train_step` and per evaluation batch (CUDA's sync debug mode); the Muon
step alone; evaluation positions/s (pr198: sliding, window 2048, stride 64; frontier:
document-isolated 2048 windows). If FlashAttention 3 runs and fails, the failure is a row, FA3
is switched off and the same measurement is made with SDPA; if it works, pr198 training is also
measured with SDPA at the end, time allowing.

Time: the check stops starting new measurements when `PGOLF_GPU_CHECK_SECONDS` (default 440) is
near, printing "skipped" rows, so the whole script stays under 8 minutes; `PGOLF_GPU_CHECK_PRESETS`
(default "pr198,frontier") picks the presets. Environment: torch with CUDA and Triton, numpy;
zstandard, brotli and FA3 are not needed (the dry run hides zstandard to prove it).
`PGOLF_GPU_CHECK_DRY=fa3-fails` also plants a failing FA3 on CPU to show the fallback.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

DRY_SETTING = os.environ.get("PGOLF_GPU_CHECK_DRY", "")
DRY = DRY_SETTING not in ("", "0")
if DRY:
    sys.modules["zstandard"] = None  # an import of it fails: the measured path must not need it

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from pgolf import attention, bench, flash3, flops  # noqa: E402
from pgolf.config import apply_overrides, get_preset  # noqa: E402
from pgolf.distributed import DistInfo  # noqa: E402
from pgolf.evaluate import evaluate  # noqa: E402
from pgolf.model import GPT  # noqa: E402
from pgolf.runtime import compiled  # noqa: E402
from pgolf.train import train_step  # noqa: E402

BUDGET_SECONDS = float(os.environ.get("PGOLF_GPU_CHECK_SECONDS", "1e9" if DRY else "440"))
PRESETS = [name.strip() for name in os.environ.get("PGOLF_GPU_CHECK_PRESETS", "pr198,frontier").split(",")]
# The 8-GPU references' step times at 786,432 tokens per step (spec pr198 §4, frontier.md §4):
REFERENCE_STEP_TOKENS = 786_432
PR198_STEP_SECONDS = 0.084
FRONTIER_STEP_SECONDS = {False: 0.096, True: 0.141}  # before / after the layer loop switches on
TARGET_MFU = 0.35
TARGET_EVAL_POSITIONS_PER_SECOND = 3.6e6
# What a section may take on the H200 at most (compilation included), to decide whether to start it: guesses,
# not yet measured (no GPU was lent when this was written); a first run's "measured in" lines should replace them.
SECTION_SECONDS = {"train": 120, "frontier train": 200, "eval": 60, "frontier eval": 80, "sdpa": 120}
TINY = ["num_layers=2", "model_dim=64", "num_heads=2", "num_kv_heads=1", "vocab_size=256", "eval_seq_len=64",
        "eval_batch_seqs=4"]


class Report:
    """Rows printed as they are measured, and the clock against the budget."""

    def __init__(self):
        self.started = time.perf_counter()
        self.rows: list[list[str]] = []
        self.peak = float("nan")  # bf16 matmul FLOP/s, for MFU
        self.trained: dict[str, tuple[dict, Path]] = {}  # preset -> (settings, shard) of a training that ran

    def row(self, measure: str, value, note: str = "", met: str = "") -> None:
        self.rows.append([measure, str(value), note, met])
        print(f"row: {measure} | {value} | {note} | {met}", flush=True)

    def time_left(self) -> float:
        return BUDGET_SECONDS - (time.perf_counter() - self.started)

    def has_time_for(self, section: str, label: str) -> bool:
        needed = 0 if DRY else SECTION_SECONDS[section]
        if self.time_left() >= needed:
            return True
        self.row(f"{label} {section}", "skipped", f"{self.time_left():.0f} s of the budget left, needs ~{needed} s")
        return False


def preset_settings(name: str) -> dict:
    """The config and shapes of one preset; tiny shapes on CPU for the dry run."""
    config = get_preset(name)
    eval_stride = config.eval_stride  # pr198: sliding, 64; frontier: non-overlapping, 2048
    if DRY:
        overrides = TINY + (["num_layers=3", "loop_layers=1", "parallel_lanes_from=2", "xsa_layers=0,1,2",
                             "rope_dims=8"] if name == "frontier" else [])
        config, eval_stride = apply_overrides(config, overrides), 16
        return dict(config=config, device=torch.device("cpu"), micro_batch=2, seq_len=64, grad_accum=2,
                    warmup=1, steps=2, eval_batches=2, eval_stride=eval_stride)
    return dict(config=config, device=torch.device("cuda", 0), micro_batch=48, seq_len=2048, grad_accum=8,
                warmup=2, steps=3, eval_batches=8, eval_stride=eval_stride)


# ---------------------------------------------------------------- counting


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def graphs_and_breaks(model_config, device, seq_len: int, training: bool) -> str:
    """Graphs and breaks of one forward of a fresh model, by `torch._dynamo.explain` (traced, not compiled;
    two sequences: the graph does not depend on the batch size)."""
    model = GPT(model_config).to(device)
    ids = torch.randint(0, model_config.vocab_size, (2, seq_len), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16), torch.set_grad_enabled(training):
        explanation = torch._dynamo.explain(model)(ids, ids) if training else torch._dynamo.explain(model)(ids)
    del model
    return f"{explanation.graph_count} graph(s), {explanation.graph_break_count} break(s)"


def count_syncs(function) -> int | None:
    """Synchronising CUDA calls while `function` runs (CUDA's sync debug mode turns each into a warning)."""
    if not torch.cuda.is_available() or DRY:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def shown(count) -> str:
    return "n/a (CPU)" if count is None else str(count)


def verdict(passed: bool) -> str:
    return "" if DRY else ("PASS" if passed else "FAIL")


# ---------------------------------------------------------------- training


def training_rows(label: str, preset: str, setup: dict, shard: Path, report: Report) -> bool:
    """Time training (frontier: before and after looping) and report; False when it failed (FA3 included)."""
    device, config = setup["device"], setup["config"]
    # packed rows of 98,304 tokens need FA3's varlen kernel: SDPA would build a (T, T) mask of them
    config = replace(config, packed_rows=config.packed_rows and label == "fa3")
    variant = bench.VARIANTS["bf16+compile"]
    shape = (setup["micro_batch"], setup["seq_len"], setup["grad_accum"], device)
    if preset == "frontier":  # one pass of the loop is the order before looping switches on
        plain = replace(config, model=replace(config.model, num_loop_passes=1))
        runs = [(variant, bench.bench_run_config(plain, variant, *shape)),
                (variant, bench.bench_run_config(config, variant, *shape))]
        names, targets = ["before looping", "looped"], [FRONTIER_STEP_SECONDS[False], FRONTIER_STEP_SECONDS[True]]
    else:
        runs, names, targets = [(variant, bench.bench_run_config(config, variant, *shape))], [""], [PR198_STEP_SECONDS]
    before, samples, trainers = compiled_graphs(), [], []
    started = time.perf_counter()
    try:
        results = bench.measure_training(runs, device, shard, setup["warmup"], setup["steps"],
                                         after_round=lambda: samples.append(compiled_graphs()),
                                         keep_trainers=trainers)
    except Exception as error:  # out of memory and the like: a row, then the rest of the check
        report.row(f"{label} {preset} training", "failed", bench.describe_error(error), "FAIL")
        return False
    ok = True
    for result, name, target in zip(results, names, targets):
        title = f"{label} {preset}{' ' + name if name else ''}"
        if result.error:
            report.row(f"{title} training", "failed", result.error, "FAIL")
            ok = False
            continue
        # one GPU does the 8 ranks' step of 786,432 tokens: the reference's rate per GPU
        target_rate = REFERENCE_STEP_TOKENS / 8 / target
        report.row(f"{title} train ms/step ({setup['grad_accum']} x {setup['micro_batch']} x {setup['seq_len']})",
                   f"{result.median_seconds * 1e3:.1f}", f"the record: {target * 1e3:.0f} ms on 8 GPUs", "")
        report.row(f"{title} train tokens/s", f"{result.tokens_per_second:,.0f}", f">= {target_rate:,.0f} per GPU",
                   verdict(result.tokens_per_second >= target_rate))
        if preset == "pr198":
            mfu = result.flops_per_second / report.peak
            report.row(f"{title} train MFU (bf16 peak)", f"{mfu:.1%}", f">= {TARGET_MFU:.0%}",
                       verdict(mfu >= TARGET_MFU))
        report.row(f"{title} peak memory", f"{result.peak_memory / 2**30:.1f} GiB", "", "")
        report.row(f"{title} losses (first, last)", f"{result.losses[0]:.4f}, {result.losses[-1]:.4f}", "", "")
    if not ok:
        return False
    after_warmup = samples[0] if samples else compiled_graphs()
    report.row(f"{label} {preset} train graphs compiled (warm-up; while timed)",
               f"{after_warmup - before}; {compiled_graphs() - after_warmup}",
               "model + Muon's shapes; 0 wanted while timed", verdict(compiled_graphs() == after_warmup))
    trainer = trainers[-1]
    syncs = count_syncs(lambda: train_step(trainer))
    report.row(f"{label} {preset} host syncs in one train_step", shown(syncs), "0 wanted",
               "" if syncs is None else verdict(syncs == 0))
    if preset == "pr198":
        muon = muon_step_seconds(trainer, device)
        report.row(f"{label} Muon step alone (one rank does all)", f"{muon * 1e3:.1f} ms",
                   f"{muon / results[0].median_seconds:.1%} of a step", "")
    del trainer, trainers
    free_memory(device)
    # last: explain resets dynamo, dropping what was compiled
    report.row(f"{label} {preset} train step graphs",
               graphs_and_breaks(runs[-1][1].model, device, setup["seq_len"], True),
               "the model's forward (frontier: looped); 1 graph, 0 breaks wanted", "")
    print(f"{label} {preset}: training measured in {time.perf_counter() - started:.0f} s", flush=True)
    return True


def muon_step_seconds(trainer, device: torch.device, repeats: int = 5) -> float:
    """Median time of the Muon step alone, on random gradients of the right shapes."""
    muon = trainer.optimizers[0]
    parameters = [p for group in muon.param_groups for p in group["params"]]
    for parameter in parameters:  # the step reads the gradients and leaves them in place
        parameter.grad = torch.randn_like(parameter)
    muon.step()  # warm-up
    seconds = statistics.median(bench.time_calls(muon.step, repeats, device))
    muon.zero_grad(set_to_none=True)
    return seconds


# ---------------------------------------------------------------- evaluation


def evaluation_rows(label: str, preset: str, setup: dict, report: Report) -> bool:
    """Time evaluation and report; False when it failed."""
    device, config = setup["device"], replace(setup["config"], eval_stride=setup["eval_stride"])
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = compiled(GPT(config.model).to(device), "on", device)  # looped, as evaluation runs
    before = compiled_graphs()
    try:
        evaluation = bench.measure_eval(model, config, device, setup["eval_batches"], config.eval_batch_seqs,
                                        torch.bfloat16)
    except Exception as error:
        report.row(f"{label} {preset} evaluation", "failed", bench.describe_error(error), "FAIL")
        return False
    rate = evaluation.positions_per_second
    kind = "sliding" if config.eval_stride < config.eval_seq_len else "non-overlapping"
    report.row(f"{label} {preset} {kind} eval positions/s (window {config.eval_seq_len}, stride {config.eval_stride})",
               f"{rate:,.0f}", f">= {TARGET_EVAL_POSITIONS_PER_SECOND:,.0f}" if preset == "pr198" else "",
               verdict(rate >= TARGET_EVAL_POSITIONS_PER_SECOND) if preset == "pr198" else "")
    report.row(f"{label} {preset} eval graphs compiled (warm-up and timed)", compiled_graphs() - before,
               "1 wanted (one batch shape)", "")
    per_batch = eval_syncs_per_batch(model, config, device)
    report.row(f"{label} {preset} host syncs per eval batch", shown(per_batch), "0 wanted",
               "" if per_batch is None else verdict(per_batch == 0))
    del model
    free_memory(device)
    report.row(f"{label} {preset} eval step graphs",  # last: explain resets dynamo
               graphs_and_breaks(config.model, device, config.eval_seq_len, False),
               "1 graph, 0 breaks wanted", "")
    print(f"{label} {preset}: evaluation measured in {time.perf_counter() - started:.0f} s", flush=True)
    return True


def eval_syncs_per_batch(model, config, device: torch.device) -> float | None:
    """(syncs of a 3-batch evaluation - those of a 1-batch one) / 2: what the batch loop adds."""
    seq_len, stride, batch_seqs = config.eval_seq_len, config.eval_stride, config.eval_batch_seqs
    tables = bench.uniform_byte_tables(config.model.vocab_size)

    def evaluation(num_batches: int):
        num_targets = seq_len + (num_batches * batch_seqs - 1) * stride
        tokens = np.random.default_rng(num_batches).integers(0, config.model.vocab_size, num_targets + 1)
        return lambda: evaluate(model, tokens, tables, seq_len, stride, batch_seqs, DistInfo(device=device),
                                torch.bfloat16)

    if count_syncs(evaluation(1)) is None:  # also the warm-up: the byte tables go to the device once
        return None
    one, three = count_syncs(evaluation(1)), count_syncs(evaluation(3))
    return (three - one) / 2


# ---------------------------------------------------------------- the check


def plant_failing_fa3() -> None:
    """Dry run only: an FA3 that 'runs' on CPU and fails at its first call, to show the fallback."""
    def broken(*args, **kwargs):
        raise RuntimeError("planted FA3 failure (PGOLF_GPU_CHECK_DRY=fa3-fails)")

    flash3.forward_function = flash3.varlen_forward_function = broken
    attention._fa3_device_type = "cpu"


def use_sdpa() -> None:
    """FA3 off for the rest of the process, compiled code thrown away."""
    attention.resolve_backend("cuda", allow_fa3=False)
    torch._dynamo.reset()


def check_preset(preset: str, shard_folder: Path, report: Report) -> None:
    setup = preset_settings(preset)
    device, config = setup["device"], setup["config"]
    tokens_needed = ((setup["warmup"] + setup["steps"] + 4) * setup["grad_accum"]
                     * (setup["micro_batch"] * setup["seq_len"] + 1) + 1)
    shard = bench.write_synthetic_shard(shard_folder / preset, config.model.vocab_size, tokens_needed,
                                        seed=config.seed)
    report.row(f"{preset} FLOP per training token",
               f"{flops.training_flops_per_token(config.model, setup['seq_len']):,}",
               f"{flops.matrix_parameters(config.model):,} matrix parameters (loops not counted)", "")
    for section, measure in (("train", lambda label: training_rows(label, preset, setup, shard, report)),
                             ("eval", lambda label: evaluation_rows(label, preset, setup, report))):
        section = f"frontier {section}" if preset == "frontier" else section
        label = attention.attention_backend_name(device)
        if not report.has_time_for(section, f"{label} {preset}"):
            continue
        succeeded = measure(label)
        if not succeeded and label == "fa3":  # reported; the same with SDPA
            report.row(f"{preset} {section} with FA3", "failed", "measured again with SDPA", "FAIL")
            use_sdpa()
            if report.has_time_for(section, f"sdpa {preset}"):
                succeeded = measure("sdpa")
        if succeeded and section.endswith("train"):
            report.trained[preset] = (setup, shard)


def main() -> int:
    report = Report()
    device = torch.device("cpu") if DRY else torch.device("cuda", 0)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; set PGOLF_GPU_CHECK_DRY=1 for the CPU dry run", file=sys.stderr)
        return 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        bench.configure_threads(1)  # a shared CPU; the dry run shows that it runs, not how fast
        machine = f"CPU dry run (tiny shapes), torch {torch.__version__}"
    wheel = "imported" if flash3.available() else "not installed"
    if DRY and DRY_SETTING == "fa3-fails":
        plant_failing_fa3()
        wheel = "a planted one that fails"
    attention.resolve_backend(device)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\nmachine: {machine}\n"
          f"FA3: {wheel}; presets: {', '.join(PRESETS)}; budget {BUDGET_SECONDS:.0f} s", flush=True)
    peak, size = bench.matmul_peak(device, torch.bfloat16, (128, 256) if DRY else (4096, 8192))
    report.row("bf16 matmul peak", f"{peak / 1e12:.1f} TFLOP/s", f"{size}^3, median of 5", "")
    report.peak = peak
    fa3_ran = attention.attention_backend_name(device) == "fa3"
    with tempfile.TemporaryDirectory(prefix="pgolf-gpu-check-") as folder:
        for preset in PRESETS:
            (Path(folder) / preset).mkdir()
            check_preset(preset, Path(folder), report)
        if fa3_ran and attention.attention_backend_name(device) == "fa3" and "pr198" in report.trained:
            use_sdpa()  # FA3 worked: the same training with SDPA, for the comparison
            setup, shard = report.trained["pr198"]
            if report.has_time_for("sdpa", "sdpa pr198"):
                training_rows("sdpa", "pr198", setup, shard, report)
    print(f"\nchecked in {time.perf_counter() - report.started:.0f} s\n", flush=True)
    print(bench.format_table(["measure", "value", "target / note", "met?"], report.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
