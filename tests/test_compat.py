"""Every private-API shim in pretrain/compat.py, exercised against the installed versions.

When an upgrade of torch or DeepSpeed moves a private name, the failure is here, named.
"""

from __future__ import annotations

import ast
import gc
import inspect
import io
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain import compat

REPO = Path(__file__).resolve().parents[1]


def test_pinned_torch() -> None:
    pin = next(
        line.split("==")[1].strip()
        for line in (REPO / ".ci/constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    assert torch.__version__.split("+")[0] == pin


def test_in_backward_tells_backward_from_forward() -> None:
    seen: list[bool] = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen.append(compat.in_backward())
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            seen.append(compat.in_backward())
            return grad * 2

    x = torch.ones(3, requires_grad=True)
    Probe.apply(x).sum().backward()
    assert seen == [False, True]


def test_checkpoint_wrapper_recomputes_with_equal_results() -> None:
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    wrapped = compat.checkpoint_wrapper(nn.Sequential(*[m for m in plain]))
    x = torch.randn(5, 4)
    plain(x).sum().backward()
    grads = [p.grad.clone() for p in plain.parameters()]
    plain.zero_grad()
    wrapped(x).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, plain.parameters()))


def test_skip_update_where_leaves_parameters_and_state_untouched() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    compat.skip_update_where(opt, torch.tensor(0.0))
    opt.step()
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    p.grad = torch.full((3,), float("nan"))
    compat.skip_update_where(opt, torch.tensor(1.0))
    opt.step()
    assert torch.equal(p.detach(), before[0])
    assert all(torch.equal(opt.state[p][k], v) for k, v in before[1].items())
    compat.skip_update_where(opt, torch.tensor(0.0))
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(p.detach(), before[0]) and opt.state[p]["step"].item() == 2


def test_foreach_lerp_moves_each_target_towards_its_source() -> None:
    targets = [torch.zeros(3), torch.full((2, 2), 4.0)]
    compat.foreach_lerp_(targets, [torch.ones(3), torch.zeros(2, 2)], 0.25)
    assert torch.equal(targets[0], torch.full((3,), 0.25))
    assert torch.equal(targets[1], torch.full((2, 2), 3.0))


def test_strided_shard_splits_each_stacked_part() -> None:
    """On a 1-rank mesh the placement keeps the tensor whole; its layout rule on 2 ranks."""
    placement = compat.strided_shard(0, 3)
    assert placement.split_factor == 3 and placement.dim == 0
    rows = torch.arange(12.0)[:, None]
    pieces = placement._split_tensor(rows, 2, with_padding=False)[0]
    assert pieces[0].flatten().tolist() == [0, 1, 4, 5, 8, 9]  # [q_0; k_0; v_0]


def test_dcp_shims(tmp_path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    base = compat.dcp_writer_transforms_base()
    assert hasattr(base, "transform_save_stream")
    stream, extensions = base(()).transform_save_stream(None, io.BytesIO())
    assert extensions == []

    root: dict = {"a": {"b": 1}}
    compat.dcp_set_element(root, ("a", "b"), 2)
    assert root == {"a": {"b": 2}}

    dcp.save({"w": torch.arange(4.0)}, checkpoint_id=str(tmp_path), no_dist=True)
    path = compat.dcp_metadata_path(FileSystemReader(str(tmp_path)), None)
    assert Path(str(path)) == tmp_path / ".metadata"


def test_deepspeed_shims() -> None:
    pytest.importorskip("deepspeed")
    import deepspeed.ops
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    builder = compat.deepspeed_cpu_shm_comm_builder()
    assert isinstance(builder.NAME, str) and builder.NAME
    table = deepspeed.ops.__compatible_ops__
    before = table.get(builder.NAME)
    try:
        compat.deepspeed_disable_op(deepspeed, builder.NAME)
        assert table[builder.NAME] is False
    finally:
        if before is None:
            table.pop(builder.NAME, None)
        else:
            table[builder.NAME] = before
    engine_cls = compat.deepspeed_torch_checkpoint_engine()
    assert callable(engine_cls.load) and callable(engine_cls.save)
    # The engine and ZeRO optimizer attributes the shims read are set in their constructors.
    assert "self._config" in _source(DeepSpeedEngine.__init__)
    assert "self.optimizer" in _source(DeepSpeedZeroOptimizer.__init__)
    # deepspeed_zero3_partitioner's private step (run on 2 ranks by tests/
    # test_models_meta_init.py): it partitions a list and skips parameters already partitioned
    from deepspeed.runtime.zero.partition_parameters import Init

    convert = _source(Init._convert_to_zero_parameters)
    assert "param_list" in convert and "is_zero_param(param)" in convert


def _gloo_threads() -> list[str]:
    names = [(t / "comm").read_text().strip() for t in Path("/proc/self/task").iterdir()]
    return [n for n in names if "gloo" in n]


def test_release_dtensor_caches_lets_the_mesh_and_its_threads_go(monkeypatch) -> None:
    """After a DTensor redistribute and matmul, DTensor's caches hold the mesh (and its group,
    whose gloo threads then outlive destroy_process_group); released, both go."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    assert not dist.is_initialized()
    gc.collect()  # an earlier test's group still in a reference cycle would die mid-test
    before = len(_gloo_threads())  # another test's groups, if any: not ours to judge
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        x = distribute_tensor(torch.ones(4, 4), mesh, [Shard(0)])
        assert torch.equal((x @ x.redistribute(mesh, [Replicate()])).full_tensor(),
                           torch.full((4, 4), 4.0))  # fmt: skip
        mesh_ref = weakref.ref(mesh)
        del x, mesh
    finally:
        dist.destroy_process_group()
    gc.collect()
    assert mesh_ref() is not None and len(_gloo_threads()) > before  # what the caches hold
    compat.release_dtensor_caches()
    gc.collect()
    assert mesh_ref() is None and len(_gloo_threads()) == before


def test_deepspeed_release_references() -> None:
    pytest.importorskip("deepspeed")
    import deepspeed.comm  # noqa: F401  (the shim acts once deepspeed.comm is imported)
    from deepspeed.comm.torch import TorchBackend
    from deepspeed.runtime.zero import parameter_offload

    parameter_offload.FWD_MODULE_STACK.append(nn.Linear(1, 1))
    compat.deepspeed_release_references()
    assert parameter_offload.FWD_MODULE_STACK == []
    # The bodies read a None group as the world group: None is the same default.
    for method in (TorchBackend.barrier, TorchBackend.monitored_barrier):
        assert inspect.signature(method).parameters["group"].default is None
        assert "if group is None:\n            group = torch.distributed.GroupMember.WORLD" in (
            _source(method)
        )


def _source(fn) -> str:
    import inspect

    return inspect.getsource(fn)


def test_private_names_only_in_compat() -> None:
    """Outside compat.py, no project module touches a private torch / DeepSpeed name."""
    offenders = []
    for pkg in ("pretrain", "launch", "data_pipeline"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path.name == "compat.py" and path.parent.name == "pretrain":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    root = node.module.split(".")[0]
                    private = any(p.startswith("_") for p in node.module.split(".")) or any(
                        a.name.startswith("_") for a in node.names
                    )
                    if root in ("torch", "deepspeed") and private:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
                elif isinstance(node, ast.Attribute) and node.attr in (
                    "_C", "_config", "__compatible_ops__", "_get_metadata_path",
                ):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, "private torch/DeepSpeed API outside pretrain/compat.py: " + ", ".join(
        offenders
    )
