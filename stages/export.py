"""`vgf export`: the acting policy as one self-contained program that plain torch (or onnxruntime) runs.

A method's acting is not one network: VGF samples the reference flow and moves the particles along
the critic's value gradient, QGF guides the flow's Euler steps with it, QAM edits flow samples. The
stage traces ``agent.act`` itself, with the chosen settings (budget L, particles N, guidance w; the
same rows ``vgf evaluate`` would run), down to ATen operations with ``make_fx``: the gradient steps
through the critic become ordinary operations of the graph (its backward kernels), so nothing of
autograd, the method's code or vgf is needed to run it. ``torch.export`` then makes it a program
with a dynamic batch dimension, saved as ``policy.pt2``; with ``export.format=onnx`` also as
``policy.onnx`` (only for acting without gradient kernels, which ONNX lacks: bc, fql, qam, vgf L=0).

The program's inputs: ``observations`` ``[B, obs_dim]`` float32 (a policy on camera frames: uint8
``[B, H, W, C * frame_stack]`` frame stacks, its encoder inside the program) and ``noise`` ``[B, noise_dim]``
standard normals, every random draw ``act`` makes, in its order (``vgfcli.nn.noise``); the output
is ``actions`` ``[B, act_dim]`` (an action chunk flattened where H > 1). ``vgf.json`` inside the
file (``torch.export.load(path, extra_files={"vgf.json": ""})``) says all of this.

Before the stage finishes it checks parity: the saved program (and the ONNX model) and ``agent.act``
on the same dataset observations with the same noise agree to ``export.tolerance``; a mismatch fails
the run. The program is fp32 and built on the run's device.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time

from vgfcli import agents, seeds
from vgfcli.errors import VgfError
from vgfcli.stage import Inputs, Outcome, Stage, StageResult

# export.* knob -> the evaluate knob of the same meaning (Agent.eval_knobs says which a method reads)
KNOBS = {"budget": "budgets", "guidance": "guidance", "particles": "particles"}


class ExportParityError(VgfError):
    """The exported program does not act as the agent does: a bug, not the user's input (exit 1)."""

    exit_code = 1
    keep_run = True


class ExportStage(Stage):
    name = "export"
    config_name = "train"
    code_version = 2  # 2: vgf.json says the observations' shape and dtype (camera frames go in as uint8)
    main_metrics = ("parity_max_abs_diff", "noise_dim")

    needs = ("policy", "dataset", "critic")  # no critic for a method with nothing to train (BC)

    def key_config(self, cfg, inputs: Inputs) -> dict:
        from vgfcli.config import to_dict

        knobs = agents.method_module(cfg).Agent.eval_knobs
        export = {k: v for k, v in to_dict(cfg.export).items() if k not in KNOBS or KNOBS[k] in knobs}
        method = {"name": cfg.method.name} if "critic" in inputs.upstream else to_dict(cfg.method)
        return {"export": export, "method": method, "seed": cfg.seed}

    def ignored(self, cfg) -> list[str]:
        knobs = agents.method_module(cfg).Agent.eval_knobs
        return [f"export.{k} is ignored by method {cfg.method.name} (it reads {', '.join(knobs) or 'none of them'})"
                for k, knob in KNOBS.items() if cfg.export[k] is not None and knob not in knobs]

    def run(self, cfg, inputs: Inputs, run, ui) -> StageResult:
        import torch

        from vgfcli.methods.base import NullCounter
        from vgfcli.training import resolve_device

        x = cfg.export
        device = resolve_device(cfg.device)
        agent, saved = agents.load_agent(cfg, inputs.upstream, device, fp32_eager=True)
        run.set_tags({"vgf.device": str(device), "vgf.method": cfg.method.name})
        setting = export_setting(agent, cfg)
        obs = parity_observations(inputs.upstream["dataset"].output_paths()["dataset"], x.parity_states, device,
                                  saved.get("frame_stack"))
        agent.compute = NullCounter()  # a count made of the batch size would fix the program's batch size

        with ui.status(f"tracing {cfg.method.name} acting ({setting.label})"):
            program, noise, expected, graph = trace_acting(agent, setting.options, obs, cfg.seed)
        meta = {"format": "vgf-acting-program/1", "method": cfg.method.name, "setting": setting.label,
                "options": dict(setting.options), "obs_dim": agent.obs_dim, "act_dim": agent.act_dim,
                "chunk": agent.chunk, "noise_dim": int(noise.shape[1]), "device": str(device), "dtype": "float32",
                # camera frames go in as the uint8 frame stacks the rollouts make, states as float32 vectors
                "observations_dtype": str(obs.dtype).removeprefix("torch."),
                "inputs": {"observations": ["B", *obs.shape[1:]], "noise": ["B", int(noise.shape[1])]},
                "outputs": {"actions": ["B", agent.act_dim]}, "torch": torch.__version__,
                "usage": "torch.export.load(path).module()(observations, noise); noise = torch.randn(B, noise_dim)"}
        pt2 = run.staging / "policy.pt2"
        torch.export.save(program, str(pt2), extra_files={"vgf.json": json.dumps(meta, indent=1)})

        loaded = torch.export.load(str(pt2)).module()
        diffs = {"pt2": _max_diff(loaded(obs, noise), expected)}
        outputs = {"program": pt2}
        if x.format == "onnx":
            gradient_ops = sorted({str(n.target) for n in graph.nodes if "backward" in str(n.target)})
            if gradient_ops:
                raise VgfError(f"export.format=onnx: {cfg.method.name} acting ({setting.label}) takes gradients "
                               f"through the critic ({', '.join(gradient_ops[:3])}), which ONNX has no operators for; "
                               "use export.format=pt2")
            onnx_path = run.staging / "policy.onnx"
            with ui.status("converting to ONNX"):
                to_onnx(program, obs, noise, onnx_path)
            diffs["onnx"] = _max_diff(run_onnx(onnx_path, obs, noise), expected)
            outputs["onnx"] = onnx_path
        worst = max(diffs.values())
        if not worst <= x.tolerance:  # NaN fails too
            raise ExportParityError(f"export parity failed: the exported program and agent.act differ by {worst:.3g} "
                                    f"(tolerance {x.tolerance:g}; per format: {diffs})")
        speed = actions_per_second(loaded, agent, setting.options, obs, noise)
        metrics = {"parity_max_abs_diff": worst, "noise_dim": float(noise.shape[1]), **speed}
        summary = {"method": cfg.method.name, "setting": setting.label, "options": dict(setting.options),
                   "noise_dim": int(noise.shape[1]), "obs_dim": agent.obs_dim, "act_dim": agent.act_dim,
                   "observation_shape": list(obs.shape[1:]), "observations_dtype": meta["observations_dtype"],
                   "chunk": agent.chunk, "device": str(device), "parity_states": int(obs.shape[0]),
                   "parity_max_abs_diff": diffs, "format": x.format, **{k: round(v, 1) for k, v in speed.items()}}
        return StageResult(outputs=outputs, metrics=metrics, summary=summary)

    def render(self, outcome: Outcome):
        from rich.table import Table

        s = outcome.summary
        table = Table(title=f"export: {s['method']} ({s['setting']})", title_justify="left", show_header=False)
        for name, path in outcome.outputs.items():
            table.add_row(name, str(path))
        shape = ", ".join(map(str, s.get("observation_shape", [s["obs_dim"]])))
        table.add_row("inputs", f"observations [B, {shape}] {s.get('observations_dtype', 'float32')}, "
                                f"noise [B, {s['noise_dim']}] ~ N(0, 1)")
        table.add_row("output", f"actions [B, {s['act_dim']}]" + (f" (chunk H = {s['chunk']})" if s["chunk"] > 1 else ""))
        table.add_row("parity |Δa| max", ", ".join(f"{k} {v:.2g}" for k, v in s["parity_max_abs_diff"].items())
                      + f" over {s['parity_states']} dataset states")
        table.add_row("actions/s", f"program {s['program_actions_per_s']:.0f}, agent.act {s['agent_actions_per_s']:.0f} "
                                   f"(batch {s['parity_states']}, {s['device']})")
        return table


def export_setting(agent, cfg):
    """The one acting setting to export: the row ``vgf evaluate`` would run for these knobs."""
    from omegaconf import OmegaConf

    x = cfg.export
    knobs = {"budgets": None if x.budget is None else [x.budget],
             "guidance": None if x.guidance is None else [x.guidance], "particles": x.particles}
    try:
        settings = agent.eval_settings(OmegaConf.create(knobs))
    except ValueError as exc:
        raise VgfError(f"export: {exc}") from None
    if not settings:  # a method whose evaluate has only the reference row (bc): its act() as it is
        from vgfcli.methods.base import EvalSetting

        return EvalSetting(cfg.method.name, "policy", 1, {})
    if len(settings) != 1:
        raise VgfError(f"export: these settings give {len(settings)} acting rules, not one")
    setting = settings[0]
    if any(isinstance(v, str) for v in setting.sweep.values()):
        raise VgfError(f"export: an adaptive budget ({setting.label}) takes a different number of steps per state "
                       "and cannot be one fixed program; give export.budget=<L>")
    return setting


def parity_observations(dataset_path, count: int, device, frame_stack: int | None = None):
    """``count`` observations spread evenly over the dataset (the states the policy was trained on);
    for a pixel dataset, uint8 frame stacks of ``frame_stack`` frames as the rollouts make them."""
    import h5py
    import numpy as np
    import torch

    with h5py.File(dataset_path, "r") as f:
        rows = f["observations"].shape[0]
        index = np.unique(np.linspace(0, rows - 1, min(count, rows)).round().astype(np.int64))
        pixels = "frames" in f
        obs = None if pixels else f["observations"][index]
    if not pixels:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device)
    from vgfcli.training import load_tensors

    data = load_tensors(dataset_path, device, frame_stack=frame_stack)
    return data.pixels.observe(data.observations[torch.as_tensor(index, device=device)])


def trace_acting(agent, options: dict, obs, seed: int):
    """``agent.act`` as an ExportedProgram ``(observations, noise) -> actions`` with a dynamic batch,
    plus the noise it drew on ``obs`` (recorded from a seeded generator), its actions, and the ATen graph."""
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    from vgfcli.nn.noise import GivenNoise, RecordedNoise

    recorded = RecordedNoise(torch.Generator(device=obs.device).manual_seed(seed + seeds.EXPORT_PARITY))
    expected = agent.act(obs, generator=recorded, **options).detach()
    noise = recorded.matrix()

    def act(observations, given):
        return agent.act(observations, generator=GivenNoise(given), **options)

    try:
        graph = make_fx(act, tracing_mode="symbolic", _allow_non_fake_inputs=True)(obs, noise)
    except TypeError as exc:  # a draw that is not a Gaussian (VGF's select=softmax/random)
        raise VgfError(f"export: this acting rule draws randomness other than Gaussian noise ({exc}); "
                       "use the method's select=max") from None

    class Acting(torch.nn.Module):
        def __init__(self, traced):
            super().__init__()
            self.traced = traced

        def forward(self, observations, noise):
            return self.traced(observations, noise)

    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    program = torch.export.export(Acting(graph), (obs, noise), dynamic_shapes=({0: batch}, {0: batch}))
    return program, noise, expected, graph.graph


def to_onnx(program, obs, noise, path) -> None:
    """The program as an ONNX model (torch's dynamo exporter), its console chatter kept off stdout."""
    import torch

    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(program, (obs, noise), str(path), dynamo=True, input_names=["observations", "noise"],
                          output_names=["actions"], verbose=False, external_data=False)


def run_onnx(path, obs, noise):
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"observations": obs.cpu().numpy(), "noise": noise.cpu().numpy()})[0]
    return torch.as_tensor(out, device=obs.device)


def actions_per_second(program, agent, options: dict, obs, noise, calls: int = 20) -> dict[str, float]:
    """Actions per second of the program and of ``agent.act`` on the parity batch (after one warm-up call)."""
    import torch

    from vgfcli.nn.noise import GivenNoise

    def rate(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        if obs.device.type == "cuda":
            torch.cuda.synchronize()
        return calls * obs.shape[0] / max(time.perf_counter() - start, 1e-9)

    with torch.inference_mode():
        program_rate = rate(lambda: program(obs, noise))
    agent_rate = rate(lambda: agent.act(obs, generator=GivenNoise(noise), **options))
    return {"program_actions_per_s": program_rate, "agent_actions_per_s": agent_rate}


def _max_diff(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


STAGE = ExportStage()
