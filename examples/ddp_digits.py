"""Data-parallel LFP training on scikit-learn's digits with DistributedDataParallel.

Each process trains on its own shard of every global batch; ``LFPOptimizer`` sums the feedback of
all processes with one all-reduce per step, so every replica makes the same update, that of one
step on the whole global batch. gloo on CPU, NCCL when every process has a GPU.

    torchrun --nproc_per_node 2 examples/ddp_digits.py                  # 20 epochs
    torchrun --nproc_per_node 2 examples/ddp_digits.py --smoke          # 1 epoch: checks that it runs
    torchrun --nproc_per_node 2 examples/ddp_digits.py --micro-batches 4
    python examples/ddp_digits.py --smoke                               # a single process works too

At the end rank 0 checks that the parameters are bit-identical on every rank.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from _digits import accuracy, load_digits_split, make_mlp  # examples/_digits.py, next to this file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lfpoptim import LFPOptimizer, SoftmaxLossReward

GLOBAL_BATCH_SIZE = 128
LEARNING_RATE = 0.1
MOMENTUM = 0.9


def identical_on_all_ranks(model: nn.Module) -> bool:
    """Whether every rank holds exactly rank 0's parameters (one broadcast of all of them)."""
    flat = torch.cat([param.detach().reshape(-1) for param in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([int(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default: 20)")
    parser.add_argument("--micro-batches", type=int, default=1, help="micro-batches accumulated per step (default: 1)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch: a quick check that it runs")
    args = parser.parse_args()
    epochs = 1 if args.smoke else args.epochs

    # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT
    distributed = "RANK" in os.environ
    use_cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    train_inputs, train_targets, test_inputs, test_targets = load_digits_split()
    train = TensorDataset(train_inputs, train_targets)
    sampler = DistributedSampler(train, num_replicas=world_size, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=GLOBAL_BATCH_SIZE // world_size, sampler=sampler)

    torch.manual_seed(0)
    model = make_mlp().to(device)
    # DDP broadcasts rank 0's initial weights; LFPOptimizer runs its forward on model.module and
    # reduces the feedback itself (DDP's gradient hooks only fire in loss.backward()).
    wrapped = DistributedDataParallel(model) if distributed else model
    optimizer = LFPOptimizer(wrapped, SoftmaxLossReward(), lr=LEARNING_RATE, momentum=MOMENTUM)

    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        rewards = []
        for batch_inputs, batch_targets in loader:
            inputs, targets = batch_inputs.to(device), batch_targets.to(device)
            for micro_inputs, micro_targets in zip(
                inputs.tensor_split(args.micro_batches), targets.tensor_split(args.micro_batches), strict=True
            ):
                rewards.append(optimizer.accumulate(micro_inputs, micro_targets).mean_reward)
            optimizer.step()
        test_accuracy = accuracy(model, test_inputs.to(device), test_targets.to(device))
        if rank == 0:
            mean_reward = sum(rewards) / len(rewards)
            print(f"epoch {epoch:3d}  mean reward (rank 0) {mean_reward:+.4f}  test accuracy {test_accuracy:.4f}")

    if distributed:
        identical = identical_on_all_ranks(model)
        if rank == 0:
            print(f"parameters {'identical' if identical else 'DIFFERENT'} on all {world_size} ranks")
        dist.destroy_process_group()
        if not identical:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
