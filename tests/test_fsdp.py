"""FSDP2 (``torch.distributed.fsdp.fully_shard``) on two processes (gloo, CPU): every family trains sharded as one
process trains on the whole batch."""

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import largekernel.nn as L
from largekernel.optim import param_groups


class _EveryFamily(nn.Module):
    """Every 2-D family in a residual chain, the sequence families on a 1-D branch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image = nn.ModuleList([
            L.Conv2d(4, 4, 9, padding=4, groups=2, backend="fft"), L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4),
            L.DclsConv2d(4, 4, 5, 9, padding=4, groups=4, interpolation="gaussian"), L.CKConv2d(4, 4, 9, groups=4),
            L.FlexConv2d(4, 4, 9, groups=4, mask_init=0.3), L.NIFFConv2d(4, 4), L.SGConv2d(4, 4, 9, kernel_dim=4),
            L.RepLKConv2d(4, 4, 9, groups=4), L.SLaKConv2d(4, 4, 9, groups=4), L.DilatedReparamConv2d(4, 4, 9, groups=4)])
        self.sequence = nn.ModuleList([L.SGConv1d(4, kernel_size=40, kernel_dim=8), L.S4DConv1d(4, kernel_size=40)])
        self.mix = L.FourierMix()

    def forward(self, image, sequence):
        for layer in self.image:
            image = layer(image) + image
        for layer in self.sequence:
            sequence = layer(sequence) + sequence
        return self.mix(image).square().mean() + sequence.square().mean()


def _batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 4, 12, 12, generator=generator), torch.randn(4, 4, 40, generator=generator)


def _train_and_evaluate(model, image, sequence):
    """One AdamW step with the marks' groups, then an evaluation: (loss, gradients by name, evaluation)."""
    optimizer = torch.optim.AdamW(param_groups(model, lr=1e-2, weight_decay=0.05))
    loss = model(image, sequence)
    loss.backward()
    grads = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad.clone()
             for n, p in model.named_parameters()}
    optimizer.step()
    with torch.no_grad():
        evaluation = model(*_batch())
    return loss.detach(), grads, evaluation


def _worker(rank: int, store: str, out: str, mixed: bool = False) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model = _EveryFamily().eval()  # batch norms on running statistics: the same on a half batch
        policy = MixedPrecisionPolicy()
        if mixed:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in [*model.image, *model.sequence]:
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        image, sequence = _batch()
        loss, grads, evaluation = _train_and_evaluate(model, image[2 * rank:2 * rank + 2],
                                                      sequence[2 * rank:2 * rank + 2])
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": loss / 2, "grads": grads, "evaluation": evaluation}, out)
        # Both ranks done before either tears gloo down: a rank that leaves while its peer still works makes the
        # peer abort (SIGABRT, "terminate called without an active exception"), as largekernel train does.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fully_sharded_on_two_processes_trains_as_one_process():
    """Each process takes half the batch; FSDP2 averages the gradients: the loss, every parameter's gradient, one
    AdamW step with :func:`param_groups` (marks included) and the evaluation after it are one process's on the
    whole batch. (Parameters are DTensors between calls and new tensors at every all-gather: the layers keep
    nothing of them across calls but what they compare.)"""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank0.pt"
        mp.spawn(_worker, args=(str(Path(folder) / "store"), str(out)), nprocs=2)
        sharded = torch.load(out)
    loss, grads, evaluation = _train_and_evaluate(_EveryFamily().eval(), *_batch())
    torch.testing.assert_close(sharded["loss"], loss, rtol=1e-5, atol=1e-6)
    assert sharded["grads"].keys() == grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(sharded["grads"][name], g, rtol=1e-4, atol=1e-6 * max(g.abs().max().item(), 1.0),
                                   msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(sharded["evaluation"], evaluation, rtol=1e-4, atol=1e-5)


def test_fully_sharded_in_mixed_precision_trains_as_one_process_in_float32():
    """FSDP2's ``MixedPrecisionPolicy`` (bfloat16 parameters for compute, buffers left in float32, gradients
    reduced in float32): every family trains, and the loss and every gradient are one float32 process's on the
    whole batch within bfloat16 accuracy. SGConv2d and the reparameterised layers (their batch norms on running
    statistics) failed: float32 buffers made a float32 kernel for a bfloat16 input."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rank0.pt"
        mp.spawn(_worker, args=(str(Path(folder) / "store"), str(out), True), nprocs=2)
        sharded = torch.load(out)
    loss, grads, _ = _train_and_evaluate(_EveryFamily().eval(), *_batch())
    # What bfloat16 arithmetic alone costs: one process, the policy's casts by hand (parameters in bfloat16,
    # buffers in float32, bfloat16 inputs), the whole batch.
    local = _EveryFamily().eval()
    for p in local.parameters():
        p.data = p.data.bfloat16()
    local_loss = local(*(t.bfloat16() for t in _batch()))
    local_loss.backward()
    local_grads = {n: p.grad for n, p in local.named_parameters()}
    assert abs(sharded["loss"].float() - loss) <= 2 * abs(local_loss.float() - loss) + 2**-8 * abs(loss)
    assert sharded["grads"].keys() == grads.keys()
    for name, g in grads.items():
        error, local_error = ((other[name].float() - g).norm() / g.norm().clamp_min(1e-12)
                              for other in (sharded["grads"], local_grads))
        assert error <= 2 * local_error + 2**-8, (name, error.item(), local_error.item())
    assert torch.isfinite(sharded["evaluation"]).all()
