"""`pitfalls plan`: what a study will cost and whether each configuration fits, before launching.

Per distinct model shape (backbone with one norm and one frozen depth) a few real training steps
run on this machine's device at the study's frame size and fast path, with 2 and 4 frames per
step: peak training memory and step time are measured at both and extended linearly in the
frames per step (everything that grows with a step's frames, activations and their gradients,
grows linearly in them; weights, gradients and the optimizer's state do not). From that line:
each configuration's peak memory (training's, or an evaluation pass's of `eval_videos` x
`eval_chunk` frames without gradients if larger) and whether it fits `--gpu-memory`, the compute per trial
(epochs x steps x step time, plus PreciseBN's extra forward passes for BN models that use it and
the evaluation of the validation frames when the data is here) and in total, and per frozen
depth the longest sequence that fits.

Peak memory is what the framework allocates (torch's allocator on CUDA; on a CPU, the
allocations torch's profiler records per op), not what the process holds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from pitfalls.config import PARAMS, StudySpec, study_precise_bn_batches
from pitfalls.config.modes import MODES
from pitfalls.config.params import DEFAULTS
from pitfalls.markdown import table
from pitfalls.models.inputs import to_input
from pitfalls.models.norms import NormOptions
from pitfalls.models.precise_bn import batch_stat_layers
from pitfalls.models.video_model import VideoModel, build_model
from pitfalls.train.fast import FastPath, Stepper, eval_lanes, prepare_model, resolve
from pitfalls.train.optim import make_optimizer
from pitfalls.train.tasks import PhaseTask

FIRST_PROBE = 2  # frames per step of the first measured point (BN needs 2)
PROBE_CAP = 16  # never train on more frames per step than this: beyond, the lines extrapolate
CPU_PROBE_PIXELS = 192 * 108  # a CPU measures larger frames at half size (per side), repeatedly
DEFAULT_GPU_GB = 80.0  # an H100's memory, when no GPU is present to ask
GiB = 2**30


# The parameters that shape the model (what the planner measures once per distinct value).
MODEL_PARAMS = tuple(n for n, p in PARAMS.items() if p.target == "model")
# The optimizer's: its state's memory and its step's time depend on them.
OPTIMIZER_PARAMS = tuple(n for n, p in PARAMS.items() if p.target == "optimizer")


def shape_params(spec: StudySpec) -> tuple[str, ...]:
    """The parameters a shape is told apart by: norm and frozen depth always, the other model
    parameters (backbone, temporal head) and the optimizer's when the study varies them."""
    varied = spec.search_space.param_values()
    return tuple(n for n in (*MODEL_PARAMS, *OPTIMIZER_PARAMS, "training")
                 if n in ("norm", "frozen_stages") or len(varied.get(n, ())) > 1)


@dataclass(frozen=True)
class ShapeCost:
    """Cost of one model shape in the frames per step: memory is flat (weights, gradients and
    optimizer state dominate) up to `knee_frames`, then a line; time is a line."""

    model: dict  # the model parameters of this shape
    knee_frames: int
    knee_bytes: float
    fixed_bytes: float
    bytes_per_frame: float
    fixed_s: float
    s_per_frame: float
    eval_s_per_frame: float
    batch_stats: bool = False  # has BN layers PreciseBN recomputes (train-mode batch statistics)
    resident_bytes: float = 0.0  # weights and optimizer state (and a no-grad forward's fixed part)
    eval_bytes_per_frame: float = 0.0  # a no-grad forward's intermediates per frame

    def peak_bytes(self, frames: int) -> float:
        return max(self.knee_bytes, self.fixed_bytes + self.bytes_per_frame * frames)

    def eval_peak_bytes(self, frames: int) -> float:
        """Peak of an evaluation pass of `frames` frames (eval_videos x eval_chunk)."""
        return self.resident_bytes + self.eval_bytes_per_frame * frames

    def step_s(self, frames: int) -> float:
        return max(self.fixed_s + self.s_per_frame * frames, 0.0)

    def longest(self, budget_bytes: float, lanes: int) -> int:
        """The longest sequence of `lanes` sequences per (micro-)step that fits the budget."""
        if self.knee_bytes > budget_bytes:
            return 0
        if self.bytes_per_frame <= 0:
            return 10**9
        return max(int((budget_bytes - self.fixed_bytes) // (self.bytes_per_frame * lanes)), 0)


@dataclass(frozen=True)
class ConfigPlan:
    params: dict
    frames_per_micro_step: int
    train_peak_bytes: float  # a training step's (a two-stage trial's larger stage)
    eval_peak_bytes: float  # an evaluation pass's: eval_videos x eval_chunk frames, no gradients
    fits: bool
    step_s: float
    trial_s: float

    @property
    def peak_bytes(self) -> float:
        return max(self.train_peak_bytes, self.eval_peak_bytes)


@dataclass
class StudyPlan:
    spec: StudySpec
    device: str
    fast: FastPath
    budget_bytes: float
    budget_source: str
    shapes: dict[tuple, ShapeCost]  # by the values of `shape_params(spec)`
    configs: list[ConfigPlan] = field(default_factory=list)
    val_frames: int | None = None
    final_frames: int | None = None  # evaluated once at the end (test, and val for predictions)
    measure_s: float = 0.0
    lengths: dict[str, list[int]] | None = None  # frames per video per split (None: data absent)

    @property
    def all_frames(self) -> int | None:
        """Every frame of every split: what a two-stage trial extracts features of."""
        return sum(sum(v) for v in self.lengths.values()) if self.lengths else None

    @property
    def total_s(self) -> float:
        """Compute of the whole study on this device: trials spread evenly over the configs."""
        if not self.configs:
            return 0.0
        return sum(c.trial_s for c in self.configs) / len(self.configs) * self.spec.num_trials


def frame_shape(spec: StudySpec) -> tuple[int, int]:
    """(H, W) of the frames a trial trains on."""
    opts = spec.dataset.options
    if spec.dataset.name == "synthetic":
        return opts.frame_size, opts.frame_size
    width, height = opts.frame_size
    return height, width


def num_outputs(spec: StudySpec) -> int:
    """The head's width (phase logits, or K x (1 regression + 3 classes) for anticipation)."""
    opts = spec.dataset.options
    if spec.task.name == "anticipation":
        tools = len(spec.task.tools) or (opts.num_tools if spec.dataset.name == "synthetic" else 5)
        return 4 * tools
    if spec.dataset.name == "synthetic":
        return opts.num_phases
    return len(getattr(opts, "phases", ()) or ()) or 7


def configurations(spec: StudySpec) -> list[dict]:
    """Every distinct combination of the factors (seeds and nuisance values cost the same), as
    trial parameters: a linked factor's level sets its parameters together."""
    space = spec.search_space
    linked = space.linked
    axes = [[level if name in linked else {name: level} for level in levels]
            for name, levels in space.factors]
    defaults = {k: spec.param_default(k) for k in DEFAULTS if k not in space.param_values()}
    configs = [{k: v for part in parts for k, v in part.items()} | defaults
               for parts in itertools.product(*axes)]
    for c in configs:  # as the trial sees it: frame_only has no temporal head
        if not MODES[c["training"]].temporal_head:
            c["temporal_head"] = None
    return configs


def measured_model(config: dict, keys: tuple[str, ...]) -> dict:
    """The model (and optimizer) parameters of the network a configuration trains first: a
    frame-wise mode (frame_only, stage 1 of two_stage) trains the CNN with a frame classifier."""
    model = {k: config[k] for k in keys if k != "training"}
    if MODES[config["training"]].frame_batches:
        model["temporal_head"] = None
    return model


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 (where C++ libraries log) to /dev/null for the block only."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(run: Callable[[], None], device: torch.device) -> float:
    """Peak bytes allocated above the level before `run` (frees below it count as negative)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced():  # kineto prints profiler_start/stop lines on every session
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
    try:
        run()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    # each allocation is counted once, in the innermost op that made it, at the op's end
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage),
                    key=lambda e: e.time_range.end)
    level = peak = 0
    for e in events:
        level += e.self_cpu_memory_usage
        peak = max(peak, level)
    return float(peak)


class _Trainer:
    """One model shape, ready to take training steps of any number of frames."""

    def __init__(self, spec: StudySpec, norm: str, frozen: int, device: torch.device,
                 fast: FastPath, hw: tuple[int, int] | None = None, **model: str):
        torch.manual_seed(0)
        self.device, self.fast = device, fast
        outputs = num_outputs(spec)
        settings = {n: model.pop(n) if n in model else spec.param_default(n)
                    for n in OPTIMIZER_PARAMS}
        params = {n: spec.param_default(n) for n in MODEL_PARAMS if n in DEFAULTS}
        params.update(model, norm=norm, frozen_stages=frozen)
        model = build_model(**params, num_classes=outputs,
                            head_options=(spec.model.head_options(params["temporal_head"])
                                          if params["temporal_head"] else None),
                            norm_options=NormOptions(spec.model.group_norm_groups,
                                                     spec.model.whitening_group_size),
                            # the trials' model and input normalization; random weights will do
                            pretrained=spec.model.pretrained, load_weights=False,
                            reinit_replaced_norms=spec.model.reinit_replaced_norms)
        self.model = prepare_model(model.to(device), fast)
        self.stepper = Stepper(self.model, make_optimizer(self.model, settings),
                               PhaseTask(outputs).loss, fast)
        self.outputs = outputs
        self.hw = hw or frame_shape(spec)

    @property
    def resident(self) -> float:
        """Bytes held from one step to the next: the weights and the optimizer's state (AdamW's
        two moments, SGD's momentum buffer), as the steps so far made it. Gradients are counted
        in the step: the step frees the last ones before it makes new ones."""
        state = self.stepper.optimizer.state.values()
        return float(sum(p.numel() * p.element_size() for p in self.model.parameters())
                     + sum(t.numel() * t.element_size() for s in state for t in s.values()
                           if torch.is_tensor(t)))

    def _inputs(self, frames: int):
        h, w = self.hw
        rng = np.random.default_rng(frames)
        x = rng.integers(0, 256, (1, frames, h, w, 3), dtype=np.uint8)
        y = torch.from_numpy(rng.integers(0, self.outputs, (1, frames))).to(self.device)
        return x, y

    def step(self, frames: int) -> None:
        x, y = self._inputs(frames)
        self.stepper.step(to_input(x, self.device), (y,), None)

    def peak(self, frames: int) -> tuple[float, float]:
        """Peak training memory of a step on `frames` frames, and the wall time of the plain
        step taken first (so the optimizer's state exists before the profiled one)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.step(frames)
        sync()
        seconds = time.perf_counter() - t0
        self.stepper.optimizer.zero_grad(set_to_none=True)
        return self.resident + peak_memory(lambda: self.step(frames), self.device), seconds

    def saved_bytes(self, frames: int) -> float:
        """Bytes of the activations autograd keeps for the backward pass (weights excluded)."""
        weights = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        kept: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in weights:
                kept[storage.data_ptr()] = storage.nbytes()
            return t

        x, _ = self._inputs(frames)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), self.fast.autocast():
            self.model(to_input(x, self.device))
        return float(sum(kept.values()))

    def transient_bytes(self, frames: int) -> float:
        """Peak of a forward pass that keeps nothing: the intermediates alive at once."""
        x, _ = self._inputs(frames)

        def forward() -> None:
            with torch.no_grad(), self.fast.autocast():
                self.model(to_input(x, self.device))

        return peak_memory(forward, self.device)

    def seconds(self, frames: int, evaluate: bool = False, budget_s: float = 0.5) -> float:
        """Median wall time of one step (or one evaluation forward), repeated for `budget_s`."""
        x, y = self._inputs(frames)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        times: list[float] = []
        while len(times) < 2 or (sum(times) < budget_s and len(times) < 20):
            sync()
            t0 = time.perf_counter()
            if evaluate:
                self.model.eval()
                with torch.no_grad(), self.fast.autocast():
                    self.model(to_input(x, self.device))
                self.model.train()
            else:
                self.stepper.step(to_input(x, self.device), (y,), None)
            sync()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))


def probe_shape(spec: StudySpec, device: torch.device) -> tuple[tuple[int, int], float]:
    """The frame size to measure at, and the pixel ratio back to the study's frames: a CPU
    halves large frames (per side) until they are at most CPU_PROBE_PIXELS."""
    h, w = frame_shape(spec)
    ph, pw = h, w
    while device.type == "cpu" and ph * pw > CPU_PROBE_PIXELS:
        ph, pw = max(ph // 2, 32), max(pw // 2, 32)
    return (ph, pw), (h * w) / (ph * pw)


def measure_shape(spec: StudySpec, model: dict, device: torch.device,
                  fast: FastPath, max_frames: int, eval_frames: int) -> ShapeCost:
    """Fit the memory and time lines of one model shape from a few measured steps.

    Memory is flat while weights, gradients and optimizer state dominate, then grows with the
    activations autograd keeps. From one measured step and the kept bytes per frame the knee is
    predicted; if it lies within PROBE_CAP frames, two steps past it give the line, else the
    line is the kept activations plus the forward pass's intermediates per frame (both at
    their largest at once: an upper bound) on top of weights and optimizer state.
    """
    (h, w), scale = probe_shape(spec, device)
    others = {k: v for k, v in model.items() if k not in ("norm", "frozen_stages")}
    trainer = _Trainer(spec, model["norm"], model["frozen_stages"], device, fast, (h, w), **others)
    a = FIRST_PROBE
    flat, _ = trainer.peak(a)
    saved = {n: trainer.saved_bytes(n) for n in (a, 2 * a)}
    kept = (saved[2 * a] - saved[a]) / a
    knee = a + (flat - trainer.resident - saved[a]) / kept if kept > 0 else float("inf")
    n1 = 2 * a
    while n1 < 2 * knee:
        n1 *= 2
    b = PROBE_CAP
    passing = max((trainer.transient_bytes(b) - trainer.transient_bytes(a)) / (b - a), 0.0)
    eval_fixed, eval_per_frame = eval_line(trainer, eval_frames)
    if n1 <= PROBE_CAP and n1 < max_frames:
        (m1, _), (m2, _) = trainer.peak(n1), trainer.peak(2 * n1)
        per_frame = (m2 - m1) / n1
        fixed = m2 - per_frame * 2 * n1
    else:
        per_frame = kept + passing
        fixed = trainer.resident + saved[a] - kept * a
    # Time: a slow step (a large model) grows in proportion to its frames; a fast one has a
    # fixed part (optimizer step, launch overheads) that a second point, at PROBE_CAP, separates.
    lo = 2 * a
    t_lo = trainer.seconds(lo, budget_s=0.0)
    fixed_s, s_per_frame = 0.0, t_lo / lo
    if t_lo < 0.5:
        t_lo, t_hi = trainer.seconds(lo, budget_s=0.3), trainer.seconds(PROBE_CAP, budget_s=0.3)
        s_per_frame = max((t_hi - t_lo) / (PROBE_CAP - lo), t_hi / PROBE_CAP / 4)
        fixed_s = max(t_hi - s_per_frame * PROBE_CAP, 0.0)
    evals = trainer.seconds(lo, evaluate=True, budget_s=0.0) / lo
    # measured on smaller frames: what grows with a frame grows with its pixels
    return ShapeCost(dict(model), a, flat, fixed, per_frame * scale, fixed_s,
                     s_per_frame * scale, evals * scale, bool(batch_stat_layers(trainer.model)),
                     trainer.resident + eval_fixed, eval_per_frame * scale)


def eval_line(trainer: "_Trainer", frames: int) -> tuple[float, float]:
    """(fixed bytes, bytes per frame) of a no-grad forward, fitted where it is linear: at an
    eighth and a sixteenth of the evaluation pass's `frames`, 32 frames at least (at a few
    frames, fixed workspaces such as GroupNorm's dominate and the slope there is not the
    slope later)."""
    hi = max(frames // 8, 4 * PROBE_CAP)
    if frames <= hi:
        return trainer.transient_bytes(frames), 0.0
    lo = hi // 2
    m_lo, m_hi = trainer.transient_bytes(lo), trainer.transient_bytes(hi)
    per_frame = max((m_hi - m_lo) / (hi - lo), 0.0)
    return m_hi - per_frame * hi, per_frame


def precise_bn_s(spec: StudySpec, config: dict, cost: ShapeCost) -> float:
    """PreciseBN's forward passes per epoch (`evaluation.precise_bn_batches` training batches of
    this worker's share, no gradients), costed as evaluation frames: 0 without BN layers, or
    when `precise_bn` is a factor and this configuration uses the EMA statistics."""
    if not cost.batch_stats:
        return 0.0
    batches = study_precise_bn_batches(spec, bool(config.get("precise_bn")))
    frames = max(config["videos_per_batch"] // spec.resources.workers, 1) * config["seq_len"]
    return batches * frames * cost.eval_s_per_frame


def _val_frames(spec: StudySpec) -> int | None:
    """Validation frames a trial evaluates every epoch, when cheap to know (None: data absent)."""
    if spec.dataset.name == "synthetic":
        from pitfalls.data.synthetic import video_lengths

        return sum(video_lengths(spec.dataset.options)[:spec.dataset.options.val_videos])
    try:
        from pitfalls.data.load import load_data

        return sum(len(v) for v in load_data(spec.dataset).val)
    except Exception:  # noqa: BLE001 - planning a study whose data lives elsewhere
        return None


def _lengths(spec: StudySpec) -> dict[str, list[int]] | None:
    """Frames per video of each split, when cheap to know (None: the data is not here)."""
    if spec.dataset.name == "synthetic":
        from pitfalls.data.synthetic import test_lengths, video_lengths

        opts = spec.dataset.options
        lengths = video_lengths(opts)
        return {"train": lengths[opts.val_videos:], "val": lengths[:opts.val_videos],
                "test": test_lengths(opts)}
    try:
        from pitfalls.data.load import load_data

        return {k: [len(v) for v in videos] for k, videos in load_data(spec.dataset).splits.items()}
    except Exception:  # noqa: BLE001 - planning a study whose data lives elsewhere
        return None


@dataclass(frozen=True)
class HeadCost:
    """A temporal head trained on stored features (a two-stage trial's stage 2): time and
    memory per frame of a whole-video sequence, measured on random features."""

    feature_bytes_per_frame: float  # the stored features, all held on the device
    train_s_per_frame: float
    eval_s_per_frame: float
    fixed_bytes: float  # the head's weights and optimizer state
    bytes_per_frame: float  # activations of a training sequence

    def trial_s(self, plan: "StudyPlan", epochs: int, steps: int, videos_per_batch: int) -> float:
        if not plan.lengths:
            return 0.0
        mean_train = sum(plan.lengths["train"]) / max(len(plan.lengths["train"]), 1)
        val = sum(plan.lengths.get("val", []))
        final = sum(plan.lengths.get("test", [])) + val * plan.spec.evaluation.predictions
        return (epochs * (steps * videos_per_batch * mean_train * self.train_s_per_frame
                          + val * self.eval_s_per_frame) + final * self.eval_s_per_frame)

    def peak_bytes(self, plan: "StudyPlan") -> float:
        if not plan.lengths:
            return self.fixed_bytes
        longest = max(plan.lengths["train"], default=0)
        return (plan.all_frames * self.feature_bytes_per_frame + self.fixed_bytes
                + self.bytes_per_frame * longest)


HEAD_PROBE_FRAMES = 256  # frames of the random feature sequence a head is measured on


def measure_head(spec: StudySpec, backbone: str, head: str, device: torch.device,
                 fast: FastPath) -> HeadCost:
    """Time and memory of the study's `head` on features of `backbone`'s width."""
    from pitfalls.models.backbone import backbone_info

    torch.manual_seed(0)
    width = backbone_info(backbone).num_features
    module = spec.model.head_options(head).build(width, num_outputs(spec)).to(device)
    settings = {n: spec.param_default(n) for n in OPTIMIZER_PARAMS}  # the study's optimizer
    optimizer = make_optimizer(VideoModel(torch.nn.Identity(), module), settings)
    n = HEAD_PROBE_FRAMES
    feats = torch.randn(1, n, width, device=device)
    labels = torch.randint(0, num_outputs(spec), (1, n), device=device)
    loss_fn = PhaseTask(num_outputs(spec)).loss
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with fast.autocast():
            out, _ = module(feats, None)
        loss_fn(out.float(), (labels,)).backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad(), fast.autocast():
            module(feats, None)

    step()  # the optimizer's state exists from here on
    times = {}
    for name, fn in (("train", step), ("eval", forward)):
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        sync()
        times[name] = (time.perf_counter() - t0) / 3 / n
    resident = sum(t.numel() * t.element_size() for t in module.state_dict().values()) + sum(
        t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
        if torch.is_tensor(t))
    per_frame = peak_memory(step, device) / n
    return HeadCost(4.0 * width, times["train"], times["eval"], float(resident), per_frame)


def _final_frames(spec: StudySpec) -> int | None:
    """Frames evaluated once after the last epoch: the test split at the selected checkpoint,
    and the validation split again when its predictions are written (None: data absent)."""
    again = spec.evaluation.predictions
    if spec.dataset.name == "synthetic":
        from pitfalls.data.synthetic import test_lengths

        return sum(test_lengths(spec.dataset.options)) + (_val_frames(spec) or 0) * again
    try:
        from pitfalls.data.load import load_data

        data = load_data(spec.dataset)
        return sum(len(v) for v in data.test) + sum(len(v) for v in data.val) * again
    except Exception:  # noqa: BLE001 - planning a study whose data lives elsewhere
        return None


def _planning_fast_path(spec: StudySpec, device: torch.device) -> FastPath:
    """The fast path the trials will run with; planning a GPU study on a CPU measures with the
    GPU's autocast precision (bf16 under `auto`; fp16 keeps the same bytes as bf16)."""
    from dataclasses import replace

    perf = spec.performance
    if device.type == "cpu" and spec.resources.gpus_per_worker:
        precision = "bf16" if perf.precision in ("auto", "fp16") else perf.precision
        videos, chunk = eval_lanes(perf, cuda=True)
        return replace(resolve(replace(perf, precision=precision), device),
                       channels_last=perf.channels_last is not False, eval_videos=videos,
                       eval_chunk=chunk)
    return resolve(perf, device)


def plan_study(spec: StudySpec, device: torch.device | None = None,
               gpu_memory_gb: float | None = None) -> StudyPlan:
    """Measure every model shape of `spec` on `device` and plan every configuration."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fast = _planning_fast_path(spec, device)
    if gpu_memory_gb is not None:
        budget, source = gpu_memory_gb * GiB, f"--gpu-memory {gpu_memory_gb:g} GB"
    elif device.type == "cuda":
        budget = float(torch.cuda.get_device_properties(device).total_memory)
        source = torch.cuda.get_device_name(device)
    else:
        budget, source = DEFAULT_GPU_GB * GiB, f"{DEFAULT_GPU_GB:g} GB (an H100; --gpu-memory to change)"
    t0 = time.perf_counter()
    configs = configurations(spec)
    k, workers = spec.performance.grad_accumulation, spec.resources.workers

    def frames_in_memory(c: dict) -> int:  # one micro-batch of this worker's share
        return max(c["videos_per_batch"] // workers // k, 1) * c["seq_len"]

    keys = shape_params(spec)

    def shape(c: dict) -> tuple:
        return tuple(c[k] for k in keys)

    costs = {}
    for key in sorted({shape(c) for c in configs}, key=_order):
        largest = max(frames_in_memory(c) for c in configs if shape(c) == key)
        model = next(measured_model(c, (*MODEL_PARAMS, *OPTIMIZER_PARAMS, "training"))
                     for c in configs if shape(c) == key)
        costs[key] = measure_shape(spec, model, device, fast, largest,
                                   fast.eval_videos * fast.eval_chunk)
    heads = {(c["backbone"], c["temporal_head"]): measure_head(spec, c["backbone"], c["temporal_head"], device, fast)
             for c in configs if c["training"] == "two_stage"}
    plan = StudyPlan(spec, device.type, fast, budget, source, costs, val_frames=_val_frames(spec),
                     final_frames=_final_frames(spec), measure_s=time.perf_counter() - t0,
                     lengths=_lengths(spec))
    budget_spec = spec.budget
    for c in configs:
        cost = costs[shape(c)]
        frames = frames_in_memory(c)
        step_s = k * cost.step_s(frames)
        eval_s = cost.eval_s_per_frame * plan.val_frames if plan.val_frames else 0.0
        (epochs, steps), *second = budget_spec.stages(c["training"])
        trial_s = epochs * (steps * step_s + eval_s + precise_bn_s(spec, c, cost))
        peak = cost.peak_bytes(frames)
        eval_peak = cost.eval_peak_bytes(fast.eval_videos * fast.eval_chunk)
        if second:  # two_stage: features of every frame once, then the head on them
            head = heads[(c["backbone"], c["temporal_head"])]
            (epochs2, steps2), = second
            trial_s += cost.eval_s_per_frame * (plan.all_frames or 0) + head.trial_s(
                plan, epochs2, steps2, c["videos_per_batch"])
            peak = max(peak, head.peak_bytes(plan))
        else:
            trial_s += cost.eval_s_per_frame * (plan.final_frames or 0)
        plan.configs.append(ConfigPlan(c, frames, peak, eval_peak, max(peak, eval_peak) <= budget,
                                       step_s, trial_s))
    return plan


def _order(key: tuple) -> tuple:
    """Shapes in a stable order (a frame_only shape's temporal head is None)."""
    return tuple((x is None, str(x)) if not isinstance(x, (int, float)) else (False, x) for x in key)


def _mib(b: float) -> str:
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2**20:.1f} MiB"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def render(plan: StudyPlan) -> str:
    spec = plan.spec
    varied = spec.search_space.varied_params or ["norm"]
    backbones = sorted({c.params["backbone"] for c in plan.configs}) or [spec.model.backbone]
    lines = [
        f"plan: {spec.name}: {spec.num_trials} trials ({spec.searcher.type}), "
        f"{len(plan.configs)} configuration(s), {len(plan.shapes)} model shape(s) of "
        f"{', '.join(backbones)} measured on {plan.device} in {plan.measure_s:.1f} s",
        f"fast path on {plan.device}: {plan.fast.precision}, channels_last="
        f"{plan.fast.channels_last}, grad_accumulation={plan.fast.grad_accumulation}, "
        f"activation_checkpointing={plan.fast.activation_checkpointing}; frames "
        f"{'x'.join(map(str, frame_shape(spec)[::-1]))}; memory budget {_mib(plan.budget_bytes)} "
        f"({plan.budget_source})",
        "",
    ]
    cols = varied + [c for c in ("seq_len", "videos_per_batch") if c not in varied]
    lines.append(table([*cols, "frames in memory", "peak memory (train or eval)", "fits", "s/step",
                        "compute/trial"],
                       [[*(c.params[n] for n in cols), c.frames_per_micro_step, _mib(c.peak_bytes),
                         "yes" if c.fits else "NO", f"{c.step_s:.3f}", _duration(c.trial_s)]
                        for c in plan.configs]).rstrip("\n"))
    per_trial = plan.total_s / max(spec.num_trials, 1)
    evaluation = (f"evaluation of {plan.val_frames} validation frames per epoch"
                  + (f" and {plan.final_frames} frames once at the end (test split, predictions)"
                     if plan.final_frames else "") + " included"
                  if plan.val_frames else "evaluation not included: the data is not on this machine")
    if spec.evaluation.precise_bn_batches and any(c.batch_stats for c in plan.shapes.values()):
        evaluation += (f"; PreciseBN's {spec.evaluation.precise_bn_batches} batches per epoch "
                       "included")
    lines += ["", f"compute on this {plan.device}: {_duration(per_trial)} per trial on average, "
                  f"{_duration(plan.total_s)} for all {spec.num_trials} trials ({evaluation}); "
                  "divide by the trials that run at once"]
    lanes = sorted({c.params["videos_per_batch"] for c in plan.configs})
    k, workers = spec.performance.grad_accumulation, spec.resources.workers
    lines += ["", f"longest sequence that fits {_mib(plan.budget_bytes)} "
                  f"(per worker, per micro-batch of {plan.fast.grad_accumulation}):",
              table([*shape_params(spec), *(f"videos_per_batch={v}" for v in lanes)],
                    [[*key, *(cost.longest(plan.budget_bytes, max(v // workers // k, 1)) for v in lanes)]
                     for key, cost in sorted(plan.shapes.items(), key=lambda kv: _order(kv[0]))]
                    ).rstrip("\n")]
    return "\n".join(lines)
