"""Train a small two-tower retrieval model in PyTorch with mixneg's fused
Mixed Negative Sampling loss, on synthetic data (a couple of minutes on 2
cores with the defaults).

The world: I items with hidden vectors and a Zipf popularity, U users with
hidden tastes; a user's features are a bag of items from their history, an
item's are its id and a bag of category tags. A user's next interaction is
drawn from softmax(taste·item/0.1 + log popularity). The towers are
EmbeddingBag + MLP; each step takes B (user, item) pairs, B′ items drawn
uniformly from the corpus as extra negatives, and the MNS logQ correction
log Q*_j = log((B·p_j + B′/I)/(B + B′)) with p_j the item's training
frequency. At the end it prints Recall@K on held-out interactions against
the full corpus, beside the popularity baseline.

    python python/examples/two_tower.py                 # defaults
    python python/examples/two_tower.py --steps 20      # a quick check
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import mixneg.torch as mt


def make_world(n_users: int, n_items: int, dim: int = 16, n_tags: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    item_vec = torch.randn(n_items, dim, generator=g) / dim**0.5
    taste = torch.randn(n_users, dim, generator=g) / dim**0.5
    pop = 1.0 / torch.arange(1, n_items + 1, dtype=torch.float64) ** 0.8
    pop = pop[torch.randperm(n_items, generator=g)]
    logits = taste @ item_vec.T / 0.1 + pop.log().float()  # the true model's logits
    # Item tags: the nearest of n_tags random directions, and one at random.
    tag_dirs = torch.randn(n_tags, dim, generator=g)
    tags = torch.stack([(item_vec @ tag_dirs.T).argmax(1), torch.randint(0, n_tags, (n_items,), generator=g)], 1)
    history = torch.multinomial(logits.softmax(1), 10, replacement=True, generator=g)
    train = torch.multinomial(logits.softmax(1), 20, replacement=True, generator=g)
    test = torch.multinomial(logits.softmax(1), 2, replacement=True, generator=g)
    return dict(history=history, tags=tags, n_tags=n_tags, train=train, test=test, n_items=n_items, logits=logits)


class Tower(nn.Module):
    """An EmbeddingBag over the feature ids, then a 2-layer MLP."""

    def __init__(self, vocab: int, width: int, out: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, width, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.bag(ids)), dim=-1)


class TwoTower(nn.Module):
    def __init__(self, world: dict, width: int = 64, out: int = 32):
        super().__init__()
        n_items, n_tags = world["n_items"], world["n_tags"]
        self.n_items = n_items
        self.user = Tower(n_items, width, out)  # a user is the bag of their history's items
        self.item = Tower(n_items + n_tags, width, out)  # an item is its id and its tags
        self.item_feats = torch.cat([torch.arange(n_items)[:, None], world["tags"] + n_items], 1)
        self.history = world["history"]

    def users(self, u: torch.Tensor) -> torch.Tensor:
        return self.user(self.history[u])

    def items(self, i: torch.Tensor) -> torch.Tensor:
        return self.item(self.item_feats[i])


def batches(world: dict, b: int, bp: int, steps: int, seed: int, rank: int = 0):
    """(users, positives, negatives, log_q_pos, log_q_neg) per step: log Q* as
    in the MNS paper, from the training frequency of each item."""
    g = torch.Generator().manual_seed(seed + 7919 * rank)
    train = world["train"]
    pairs_u = torch.arange(train.shape[0]).repeat_interleave(train.shape[1])
    pairs_i = train.reshape(-1)
    n_items = world["n_items"]
    p = torch.bincount(pairs_i, minlength=n_items).double() / pairs_i.numel()
    log_q = torch.log((b * p + bp / n_items) / (b + bp)).float()
    for _ in range(steps):
        idx = torch.randint(0, pairs_u.numel(), (b,), generator=g)
        neg = torch.randint(0, n_items, (bp,), generator=g)
        yield pairs_u[idx], pairs_i[idx], neg, log_q[pairs_i[idx]], log_q[neg]


@torch.no_grad()
def recall_at(model: TwoTower, world: dict, k: int) -> tuple[float, float, float]:
    """Recall@k of the held-out interactions against the whole corpus for the
    model, the popularity baseline, and the ceiling (ranking by the world's
    true logits)."""
    users = torch.arange(world["test"].shape[0])
    test = world["test"]

    def recall(scores):
        top = scores.topk(k, dim=-1).indices
        if top.dim() == 1:
            top = top.expand(test.shape[0], k)
        return (top[:, None, :] == test[:, :, None]).any(-1).float().mean().item()

    model_scores = model.users(users) @ model.items(torch.arange(world["n_items"])).T
    pop = torch.bincount(world["train"].reshape(-1), minlength=world["n_items"]).float()
    return recall(model_scores), recall(pop), recall(world["logits"])


def arguments(description: str, batch: int, per: str = "") -> argparse.ArgumentParser:
    """The examples' flags; ``batch`` is the default of --batch and
    --b-prime, ``per`` what they count per (e.g. " per rank")."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=batch, help=f"queries{per}")
    ap.add_argument("--b-prime", type=int, default=batch, help=f"uniform negatives{per}")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--recall-k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv=None) -> None:
    args = arguments(__doc__, 1024).parse_args(argv)

    torch.manual_seed(args.seed)
    world = make_world(args.users, args.items, seed=args.seed)
    model = TwoTower(world)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = mt.MnsLoss(args.temperature)
    t0 = time.perf_counter()
    for step, (u, pos, neg, lq_pos, lq_neg) in enumerate(
        batches(world, args.batch, args.b_prime, args.steps, args.seed), 1
    ):
        query = model.users(u)
        cands = model.items(torch.cat([pos, neg]))
        loss = loss_fn(query, cands, torch.cat([lq_pos, lq_neg]), ids=torch.cat([pos, neg]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:6.1f} s", flush=True)
        if not math.isfinite(loss.item()):
            raise SystemExit("the loss is not finite")
    r, pop, ceiling = recall_at(model, world, args.recall_k)
    print(f"Recall@{args.recall_k}: two-tower {r:.4f}, popularity {pop:.4f}, ceiling (true logits) {ceiling:.4f}")


if __name__ == "__main__":
    main()
