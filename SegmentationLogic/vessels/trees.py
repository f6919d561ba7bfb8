"""The portal and the hepatic tree, fitted to the skeleton graph as the cheapest pair of trees.

Every branch of the skeleton takes exactly one step into it, from a neighbouring branch
(through a junction, a kink or across a gap) or, for a seed, from its root (a hepatic root
guessed near the IVC only if no tree reaches it for less than GUESSED_ROOT_PRICE: a portal
twig passing the IVC is not a hepatic vein); the steps
chosen form two trees hanging from the portal and the hepatic seeds, and their total price
(steps.py) is least: a minimum-cost arborescence from a virtual root joined to all seeds.
A branch belongs to the tree of its seed.

Because each branch pays only for its own step in, a branch where the trees touch is
decided by the two steps that compete for it there, not by how far it is from either
root: a long, healthy tree is not penalised for its length, and a contact deep in the
periphery is judged on its own shape.

The margin of a branch is how much dearer the cheapest step into it from the other tree is
than its own step (a step that is itself a clear break of the shape leaves little margin
even without a rival: the true way in may be missing from the mask); the margin of a subtree's first branch holds for the whole subtree (if
it flipped, everything hanging from it would follow), so a branch's margin is the least
along its way up to its seed.
"""
from dataclasses import dataclass

import numpy as np

from .arborescence import min_arborescence
from .seeds import HEPATIC, PORTAL
from .steps import Steps, width

GUESSED_ROOT_PRICE = 0.3  # a guessed root yields to a step from a tree cheaper than this
# the evidence weighed differently: three times more or less of the terms whose weight
# matters most (a branch one of them gives to the other tree is doubtful)
SECOND_OPINIONS = ({"W_EXCESS": 3.0}, {"W_EXCESS": 1 / 3}, {"W_TURN": 1 / 3}, {"W_DEFICIT": 3.0}, {"W_WIDEN": 3.0},
                   {"W_TEE": 1 / 3})
CAP_SHARE = 0.05         # ... for subtrees up to this share of the vessel voxels
RIVAL_CAP = 2.0         # price of a step so implausible that any way in would be as good
TWIG_PRICE = 0.3        # a hepatic candidate the portal tree reaches this cheaply is portal


@dataclass
class TreeFit:
    label: np.ndarray        # (n_nodes,) 0 unreached or junction, 1 portal, 2 hepatic
    margin: np.ndarray       # (n_nodes,) price margin against the other tree (inf: no rival)
    parent: np.ndarray       # (n_nodes,) node the step into it comes from (-1: seed or unreached)
    price: np.ndarray        # (n_nodes,) price of that step


def _seed_branches(graph, nodes):
    """Seed nodes as branches: a junction seed stands for all its arms."""
    nodes = np.unique(np.asarray(nodes, int))
    if not len(nodes):
        return nodes
    e = graph.edges
    junction = nodes[graph.is_junction[nodes]]
    arms = np.concatenate([e[np.isin(e[:, 0], junction), 1], e[np.isin(e[:, 1], junction), 0]])
    arms = arms[~graph.is_junction[arms]]
    return np.union1d(nodes[~graph.is_junction[nodes]], arms)


def _top(parent):
    """The seed each node hangs from (itself for seeds, -1 if unreached)."""
    n = len(parent)
    up = np.where(parent >= 0, parent, np.arange(n))
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))))):
        up = up[up]
    return up


def _ancestor_min(parent, values):
    """Least value over each node and its ancestors."""
    n = len(parent)
    up = np.where(parent >= 0, parent, np.arange(n))
    acc = values.copy()
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))))):
        acc = np.minimum(acc, acc[up])
        up = up[up]
    return acc


def _depth(parent):
    """Number of ancestors of each node (0 for seeds and unreached nodes)."""
    n = len(parent)
    up = np.where(parent >= 0, parent, n)
    up = np.append(up, n)
    depth = np.append((parent >= 0).astype(int), 0)
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))))):
        depth = depth + depth[up]
        up = up[up]
    return depth[:n]


def _subtree_sum(parent, values):
    """Sum of `values` over each node and everything hanging from it."""
    acc = np.asarray(values, float).copy()
    depth = _depth(parent)
    order = np.argsort(-depth, kind="stable")
    bounds = np.r_[0, np.nonzero(np.diff(depth[order]))[0] + 1, len(order)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):     # deepest level first, one pass per level
        level = order[lo:hi]
        level = level[parent[level] >= 0]
        np.add.at(acc, parent[level], acc[level])
    return acc


def _path_price(parent, price):
    """Sum of the step prices from each node up to its seed."""
    n = len(parent)
    up = np.where(parent >= 0, parent, n)        # n: a sink past the seed
    up = np.append(up, n)
    acc = np.append(np.where(parent >= 0, price, 0.0), 0.0)
    for _ in range(max(1, int(np.ceil(np.log2(n + 1))))):
        acc = acc + acc[up]
        up = up[up]
    return acc[:n]


def _arborescence(graph, seed_class, src, dst, price, seed_price=None):
    """Parent and step price of every branch, for seed classes per node. A seed with a
    `seed_price` above 0 is a guess: a step from a neighbour may feed it instead, if cheaper."""
    n = graph.n_nodes
    root = n
    is_seed = seed_class > 0
    seed_price = np.zeros(n) if seed_price is None else seed_price
    hard = is_seed & (seed_price <= 0)
    keep = ~hard[dst] & ~graph.is_junction[src] & ~graph.is_junction[dst]
    seeds = np.nonzero(is_seed)[0]
    s = np.concatenate([src[keep], np.full(len(seeds), root)])
    d = np.concatenate([dst[keep], seeds])
    p = np.concatenate([price[keep], seed_price[seeds]])
    chosen = min_arborescence(n + 1, s, d, p, root)[:n]
    has = chosen >= 0
    parent = np.where(has, s[np.maximum(chosen, 0)], -1)
    parent[parent == root] = -1
    return parent, np.where(has, p[np.maximum(chosen, 0)], 0.0), has


def fit_trees(graph, seeds, steps=None, scale=None):
    """Portal and hepatic trees on the graph from the seeds (a TreeFit). `steps`: the
    graph's Steps (computed if None); `scale` re-weights their prices (a second opinion)."""
    n = graph.n_nodes
    steps = steps if steps is not None else Steps(graph)
    src, dst = steps.src, steps.dst
    price = steps.price if scale is None else steps.prices(scale)
    seed_class = np.zeros(n, np.uint8)
    seed_class[_seed_branches(graph, seeds.portal)] = PORTAL
    seed_class[_seed_branches(graph, seeds.hepatic)] = HEPATIC   # a user's hepatic point wins a tie
    # hepatic roots found near the IVC are guesses; the portal seed and users' points are not
    seed_price = np.zeros(n)
    guessed = _seed_branches(graph, np.setdiff1d(seeds.hepatic, seeds.user_hepatic))
    seed_price[guessed[seed_class[guessed] == HEPATIC]] = GUESSED_ROOT_PRICE
    seed_price[_seed_branches(graph, seeds.user_hepatic)] = 0.0
    label = np.zeros(n, np.uint8)
    margin = np.zeros(n)
    if not seed_class.any():
        return TreeFit(label, margin, np.full(n, -1), np.zeros(n))
    parent, step, reached = _arborescence(graph, seed_class, src, dst, price, seed_price)
    top = _top(parent)
    label[reached] = seed_class[top[reached]]
    # the cheapest step into each branch from the other tree, against its own
    rival = np.full(n, np.inf)
    other = (label[src] > 0) & (label[dst] > 0) & (label[src] != label[dst])
    np.minimum.at(rival, dst[other], price[other])
    # a step that breaks the tree shape clearly is doubtful even without a rival (the true
    # way in may be missing from the mask, as where a small piece was cut off or merged
    # into the other tree): count it against a rival at RIVAL_CAP; not for a large share of
    # the vessels, which no missing piece explains
    voxels = np.bincount(graph.voxel_node, minlength=n).astype(float)
    small = _subtree_sum(parent, voxels) <= CAP_SHARE * voxels.sum()
    own = np.maximum(np.minimum(rival, np.where(small, RIVAL_CAP, np.inf)) - step, 0.0)
    root = (seed_class > 0) & (parent < 0)
    own[root] = np.where(seed_price[root] > 0, np.maximum(np.minimum(rival[root], RIVAL_CAP) - seed_price[root], 0.0),
                         np.inf)
    margin = np.where(reached, _ancestor_min(parent, own), 0.0)
    return TreeFit(label, margin, parent, step)


def second_opinions(graph, seeds, steps, fit):
    """Per branch, how many of the SECOND_OPINIONS (the same fit with one kind of evidence
    weighed three times more or less) give it to the other tree."""
    doubt = np.zeros(graph.n_nodes, int)
    for scale in SECOND_OPINIONS:
        doubt += fit_trees(graph, seeds, steps, scale).label != fit.label
    return doubt


def drop_portal_twigs(graph, seeds, steps=None):
    """Drop automatic hepatic seeds that belong to the portal tree where it passes the IVC.

    A hepatic vein is the widest part of its tree where it ends at the IVC: no plausible
    tree step reaches it. A portal branch passing the IVC (the portal vein itself runs in
    front of it) is reached from the portal seed along plausible steps only (total price
    under TWIG_PRICE, measured at the candidate's widest branch). At least one candidate
    always stays (the one the portal tree reaches least easily)."""
    auto = np.setdiff1d(seeds.hepatic, seeds.user_hepatic)
    if not len(auto) or not len(seeds.portal):
        return seeds
    n = graph.n_nodes
    steps = steps if steps is not None else Steps(graph)
    seed_class = np.zeros(n, np.uint8)
    seed_class[_seed_branches(graph, seeds.portal)] = PORTAL
    parent, step, reached = _arborescence(graph, seed_class, steps.src, steps.dst, steps.price)
    cost = np.where(reached, _path_price(parent, step), np.inf)
    w = width(graph)
    at = np.array([max(_seed_branches(graph, [c]), key=lambda b: w[b], default=c) for c in auto])
    portal_like = cost[at] <= TWIG_PRICE
    if portal_like.all():
        portal_like[np.argmax(cost[at])] = False
    if portal_like.any():
        seeds.hepatic = np.setdiff1d(seeds.hepatic, auto[portal_like])
        seeds.support["hepatic_candidates_dropped"] = int(portal_like.sum())
    return seeds
