from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ofa_search.train import load_checkpoint

WORKER = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    from ofa_search.train import TrainConfig, run_training
    out = sys.argv[1]
    result = run_training(TrainConfig(
        space="mbv3_small28", dataset="digits", strategy="sandwich", n_random=1,
        resolutions=(16,), batch_size=16, epochs=1, steps_per_epoch=2, quiet=True,
        seed=5, out_dir=os.path.join(out, "run")))
    torch.save(result.supernet.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
""")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["config"]["strategy"] == "sandwich"
    assert all(torch.equal(a[k], ckpt["model"][k]) for k in a)  # rank 0 wrote the file
