"""The examples run, in a shortened form: the single-process PyTorch script,
and its torchrun + DDP version on 2 gloo processes."""

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
SMALL = ["--users", "300", "--items", "2000", "--steps", "12", "--batch", "128", "--b-prime", "64"]


def _run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_two_tower():
    out = _run([sys.executable, os.path.join(EXAMPLES, "two_tower.py"), *SMALL])
    assert "step    12" in out and "Recall@100: two-tower" in out


def test_two_tower_ddp():
    out = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            os.path.join(EXAMPLES, "two_tower_ddp.py"),
            *SMALL,
        ]
    )
    assert "step    12" in out and "(2 ranks)" in out
