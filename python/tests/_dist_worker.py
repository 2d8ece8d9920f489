"""One rank of the distributed tests (started by test_distributed.py with
RANK and WORLD_SIZE set): builds this rank's inputs
from the shared seed, calls mixneg.torch.distributed.mns_loss on gloo, runs
backward and saves the loss and the gradients for the parent to compare."""

import os
import sys

import torch
import torch.distributed as dist

import mixneg.torch.distributed as mdist

sys.path.insert(0, os.path.dirname(__file__))
from _dist_data import rank_inputs  # noqa: E402


def main() -> None:
    out_dir, b, bp, k, gather, with_ids, reduction, bad = sys.argv[1:9]
    b, bp, k = int(b), int(bp), int(k)
    # A file rendezvous: no TCP port to pick (and race for) on a shared machine.
    dist.init_process_group(
        "gloo",
        init_method="file://" + os.path.join(out_dir, "rendezvous"),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    x = rank_inputs(rank, b, bp, k, with_ids == "1")
    if bad == "1" and rank == world - 1:
        # The last rank passes one negative fewer: every rank must raise.
        x["negatives"] = x["negatives"][:-1].detach().requires_grad_()
        x["log_q_neg"] = x["log_q_neg"][:-1]
        x["ids_neg"] = None if x["ids_neg"] is None else x["ids_neg"][:-1]
    try:
        loss = mdist.mns_loss(
            x["query"],
            x["positives"],
            x["negatives"],
            x["log_q_pos"],
            x["log_q_neg"],
            ids_pos=x["ids_pos"],
            ids_neg=x["ids_neg"],
            gather_negatives=gather == "1",
            temperature=x["temperature"],
            row_weight=x["row_weight"],
            reduction=reduction,
        )
    except ValueError as e:
        torch.save({"error": str(e)}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
        dist.destroy_process_group()
        return
    g = x["upstream"] if reduction == "none" else torch.tensor(1.0, dtype=torch.float64)
    (loss * g).sum().backward()
    torch.save(
        {
            "loss": loss.detach(),
            "d_query": x["query"].grad,
            "d_positives": x["positives"].grad,
            "d_negatives": x["negatives"].grad,
            "d_temperature": x["temperature"].grad,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # The results are on disk and the group is torn down: leave without the
    # interpreter's teardown, where gloo's threads were seen to abort a rank
    # ("terminate called without an active exception", exit -6) now and then.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
