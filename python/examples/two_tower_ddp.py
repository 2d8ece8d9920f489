"""The two-tower example on several processes: DDP over the towers and
mixneg.torch.distributed.mns_loss, so that every rank's queries are scored
against the positives and negatives of all ranks (R·(B + B′) candidates).

    torchrun --standalone --nproc_per_node 2 python/examples/two_tower_ddp.py
    torchrun --standalone --nproc_per_node 2 python/examples/two_tower_ddp.py --steps 20

Each rank draws its own batches (a different seed per rank); DDP averages the
gradients, which with the distributed loss's contract is the gradient of the
mean loss over all R·B queries. Rank 0 prints the loss and, at the end,
Recall@K against the full corpus beside the popularity baseline.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from two_tower import TwoTower, arguments, batches, make_world, recall_at

import mixneg.torch.distributed as mdist


class Towers(torch.nn.Module):
    """Both towers in one module, so that DDP wraps one forward."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(self, u, items):
        return self.model.users(u), self.model.items(items)


def main(argv=None) -> None:
    args = arguments(__doc__, 512, " per rank").parse_args(argv)

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    world = make_world(args.users, args.items, seed=args.seed)
    model = TwoTower(world)
    net = DDP(Towers(model))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    # log Q* of the global batch: R·B positives, R·B′ uniform negatives.
    big_b, big_bp = world_size * args.batch, world_size * args.b_prime
    freq = torch.bincount(world["train"].reshape(-1), minlength=args.items).double()
    p = freq / freq.sum()
    log_q = torch.log((big_b * p + big_bp / args.items) / (big_b + big_bp)).float()
    t0 = time.perf_counter()
    data = batches(world, args.batch, args.b_prime, args.steps, args.seed, rank=rank)
    for step, (u, pos, neg, _, _) in enumerate(data, 1):
        query, cands = net(u, torch.cat([pos, neg]))
        p_pos, p_neg = cands[: args.batch], cands[args.batch :]
        loss = mdist.mns_loss(
            query, p_pos, p_neg, log_q[pos], log_q[neg], ids_pos=pos, ids_neg=neg, temperature=args.temperature
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            if rank == 0:
                print(
                    f"step {step:5d}  loss {mean.item() / world_size:.4f}  {time.perf_counter() - t0:6.1f} s",
                    flush=True,
                )
    if rank == 0:
        r, pop, ceiling = recall_at(model, world, args.recall_k)
        print(
            f"Recall@{args.recall_k}: two-tower {r:.4f}, popularity {pop:.4f}, "
            f"ceiling (true logits) {ceiling:.4f} ({world_size} ranks)"
        )
    # Every rank waits for rank 0's evaluation: a rank that tears its gloo
    # group down while another still holds connections can abort at exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
