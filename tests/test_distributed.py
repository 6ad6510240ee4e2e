"""ghostify.distill under torchrun: two CPU processes (gloo) train one model and end identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import TensorDataset

    import ghostify
    from ghostify.distill import distill

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    budget = float(sys.argv[2])  # minutes; 0: two epochs
    mode = sys.argv[3]  # "distill" or "recover"
    rank = int(os.environ["RANK"])


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Linear(16, 6)

        def forward(self, x):
            return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)))


    def images(n, seed):
        x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))
        return F.avg_pool2d(x, 3, 1, 1) * 2


    torch.manual_seed(0)
    teacher = Tiny()
    with torch.no_grad():  # BatchNorm statistics measured on images
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None
        teacher.train()(images(128, 100))
    teacher.eval()
    student = ghostify.convert(teacher, ratio=2)
    # a different start on each rank: DistributedDataParallel must make them one model
    if rank == 1:
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.01)
    steps = []
    report = {"world_size": int(os.environ["WORLD_SIZE"]), "initialized": False}
    if mode == "recover":  # what `ghostify convert --calibrate --distill` runs: calibration, then distillation
        from ghostify.data import InputPipeline
        from ghostify.recovery import recover

        done = recover(student, teacher, data=[out / "images"], val_data=None, pipeline=InputPipeline((3, 12, 12)),
                       device="cpu", calibrate=True, distill=True, samples=16, checkpoint=None, resume=False,
                       options={"epochs": 1, "batch_size": 8, "freeze_bn": False}, start_stage="converted")
        report.update(calibrated=done.calibration is not None, epochs=len(done.training), threads=torch.get_num_threads(),
                      losses=[record["loss"] for record in done.training])
    else:
        data = TensorDataset(images(32, 5), torch.full((32,), -1))
        if budget and rank == 1:
            time.sleep(3)  # a late process: it sees more of the budget left than rank 0, which waited for it
        result = distill(student, teacher, data, epochs=2, batch_size=8, freeze_bn=False, minutes=budget,
                         checkpoint=out / "checkpoint.pt",
                         progress=lambda event, info: steps.append(info["loss"]) if event == "step" else None)
        report.update(epochs=result.config.epochs, losses=[record.loss for record in result.history])
    torch.save({"parameters": {name: p.detach() for name, p in student.named_parameters()},
                "buffers": {name: b for name, b in student.named_buffers()}}, out / f"rank{rank}.pt")
    report.update(steps=steps, initialized=torch.distributed.is_initialized())
    (out / f"rank{rank}.json").write_text(json.dumps(report))
''')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch build has no gloo backend")


def _run_two_processes(tmp_path: Path, minutes: float = 0.0, mode: str = "distill") -> list[dict]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), str(tmp_path), str(minutes), mode]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@needs_gloo
def test_two_processes_train_one_model(tmp_path):
    reports = _run_two_processes(tmp_path)
    assert all(r["world_size"] == 2 and r["initialized"] for r in reports)
    # the logged losses are averaged over both ranks, so each rank reports the same numbers
    assert reports[0]["losses"] == reports[1]["losses"]
    assert reports[0]["losses"][1] < reports[0]["losses"][0]
    assert len(reports[0]["steps"]) == 2 * 4 and reports[1]["steps"] == []  # progress on rank 0 only
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    params = [state["parameters"] for state in states]
    assert params[0].keys() == params[1].keys() and len(params[0]) > 0
    for key in params[0]:  # rank 1 started elsewhere: DDP made them one model, and kept them one
        assert torch.equal(params[0][key], params[1][key]), key
    buffers = [state["buffers"] for state in states]
    for key in buffers[0]:
        if key.endswith(("running_mean", "running_var")):
            # with freeze_bn=False each rank updates its BatchNorm statistics from its own half of
            # the last batch (DDP broadcasts rank 0's buffers at the start of each forward only)
            torch.testing.assert_close(buffers[0][key], buffers[1][key], atol=0.05, rtol=0.05)
        else:
            assert torch.equal(buffers[0][key], buffers[1][key]), key
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # written by rank 0
    assert checkpoint["epoch"] == 2
    assert all(torch.equal(checkpoint["student"][k], v) for k, v in params[0].items())


@needs_gloo
def test_processes_started_apart_agree_on_the_epochs_a_time_budget_allows(tmp_path):
    reports = _run_two_processes(tmp_path, minutes=0.15)
    # each process sees a different share of the 9 s left; a disagreement would hang or stop one early
    assert reports[0]["epochs"] == reports[1]["epochs"] >= 2
    assert len(reports[0]["losses"]) == len(reports[1]["losses"]) == reports[0]["epochs"]
    assert reports[0]["losses"] == reports[1]["losses"]


@needs_gloo
def test_under_torchrun_the_first_process_calibrates_and_distillation_hands_its_weights_to_the_others(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    reports = _run_two_processes(tmp_path, mode="recover")
    assert [r["calibrated"] for r in reports] == [True, False]  # calibration ran once, on rank 0
    assert reports[0]["threads"] == reports[1]["threads"] == 1  # rank 0 borrowed rank 1's thread, then gave it back
    assert reports[0]["epochs"] == reports[1]["epochs"] == 1 and reports[0]["losses"] == reports[1]["losses"]
    params = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["parameters"] for r in (0, 1)]
    for key in params[0]:  # rank 1 skipped calibration and started elsewhere: it trained rank 0's calibrated model
        assert torch.equal(params[0][key], params[1][key]), key
