"""Class-sharded distillation with 2 gloo ranks on the CPU equals one process (DM — with BatchNorm networks too — and
DC give the same set; MTT the same losses).

The ranks are forced onto the CPU (gloo) even where GPUs are visible: a one-GPU machine has no GPU for rank 1.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ld3m_fast.distillation import DistilledSet, distill, train_experts
from ld3m_fast import distributed
from ld3m_fast.distributed import Group, shard_classes
from ld3m_fast.errors import DeviceError
from ld3m_fast.evaluation import evaluate
from tests.helpers.compvis_style import CompVisStyleLDM
from tests.helpers.toy import small, toy_data

WORKER = Path(__file__).parent / "helpers" / "dist_worker.py"
sys.path.insert(0, str(WORKER.parent))
from dist_worker import CASES, DEVICE, EVAL  # noqa: E402


def torchrun(case, out, experts="", timeout=240, extra_env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", LD3M_FAST_DIST_DEVICE=DEVICE, **(extra_env or {}))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), case,
           "--out", str(out), "--experts", str(experts)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    return train_experts(toy_data(), tmp_path_factory.mktemp("experts"), num_experts=2, epochs=3, width=16,
                         batch_size=16, seed=0, progress=False)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, experts):
    out = tmp_path_factory.mktemp("sharded")
    proc = torchrun("equal", out, experts.path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_give_what_one_process_gives(sharded, experts, name):
    space, algorithm, extra = CASES[name]
    model = CompVisStyleLDM(seed=3) if space == "latent" else None
    kw = small(model, **extra)
    if algorithm == "mtt":
        kw["experts"] = experts.path
    single = distill(toy_data(), model, ipc=2, algorithm=algorithm, iterations=3, seed=2, device=DEVICE, **kw)
    both = DistilledSet.load(sharded / name)
    assert torch.equal(both.labels, single.labels)
    assert [h["loss"] for h in both.history] == pytest.approx([h["loss"] for h in single.history], rel=1e-5)
    if algorithm != "mtt":
        assert torch.allclose(both.images, single.images, atol=1e-5, rtol=1e-5)
        for key in ("Z", "c"):
            a, b = getattr(both, key), getattr(single, key)
            assert (a is None and b is None) or torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert (sharded / f"{name}_ckpt" / "state.safetensors").is_file()  # rank 0 wrote the gathered checkpoint


def test_evaluation_jobs_spread_over_two_ranks_give_one_table(sharded):
    single = evaluate(toy_data(), toy_data(seed=1, per_class=4), **EVAL)
    both = json.loads((sharded / "eval.json").read_text())
    assert [r["accuracies"] for r in both["rows"]] == [r.accuracies for r in single.rows]
    assert [r["arch"] for r in both["rows"]] == ["ConvNet", "AlexNet"]
    assert (sharded / "backend.txt").read_text() == "gloo"  # the CPU path, also on machines with GPUs


def test_ranks_that_disagree_on_the_settings_stop_with_a_message(tmp_path):
    proc = torchrun("disagree", tmp_path)
    assert proc.returncode != 0
    assert "ranks disagree on the settings" in (tmp_path / "error_rank0.txt").read_text()


def test_more_ranks_than_classes(tmp_path):
    proc = torchrun("too_many_ranks", tmp_path)
    assert proc.returncode != 0
    assert "2 ranks but only 1 classes" in (tmp_path / "error_rank0.txt").read_text()


def test_a_dying_rank_stops_the_others_instead_of_hanging(tmp_path):
    """Launched like srun (no torchrun agent to kill the survivors): rank 0 must notice by itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), LD3M_FAST_DIST_TIMEOUT="60", OMP_NUM_THREADS="1",
                   LD3M_FAST_DIST_DEVICE=DEVICE)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "rank_dies", "--out", str(tmp_path)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    codes = [p.wait(timeout=200) for p in procs]
    assert codes == [1, 3]  # rank 1 vanished (exit 3) and rank 0 stopped with an error instead of waiting
    assert not (tmp_path / "error_rank1.txt").exists()
    assert "RankLost: rank 0 lost contact with the other ranks" in (tmp_path / "error_rank0.txt").read_text()


@pytest.mark.parametrize("classes, world", [(10, 2), (10, 3), (3, 3), (7, 4)])
def test_class_shards_cover_every_class_once(classes, world):
    shards = [shard_classes(classes, Group(r, world, torch.device("cpu"))) for r in range(world)]
    assert sum(shards, []) == list(range(classes))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_rank_device_honours_the_argument_then_the_environment(monkeypatch):
    monkeypatch.setenv("LD3M_FAST_DIST_DEVICE", "cpu")
    assert distributed._rank_device(None) == torch.device("cpu")
    monkeypatch.delenv("LD3M_FAST_DIST_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed._rank_device(None) == torch.device("cpu")  # no GPU: gloo
    with pytest.raises(DeviceError, match="no CUDA GPU is visible"):
        distributed._rank_device("cuda")


def test_more_ranks_than_gpus_is_a_clear_error_not_an_invalid_ordinal(monkeypatch):
    """Two ranks on a one-GPU node: rank 1 must not call set_device(1)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LD3M_FAST_DIST_DEVICE", raising=False)
    with pytest.raises(DeviceError, match=r"wants GPU 1 .* has 1 visible GPU\(s\).*--nproc_per_node=1"):
        distributed._rank_device(None)
    with pytest.raises(DeviceError, match="wants GPU 3"):
        distributed._rank_device("cuda:3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed._rank_device(None) == torch.device("cuda", 0)
    assert distributed._rank_device("cpu") == torch.device("cpu")
