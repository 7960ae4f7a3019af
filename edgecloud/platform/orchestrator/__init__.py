"""The orchestrator: places every instance of every application on the infrastructure.

OR-Tools CP-SAT over integer counts (how many instances of component c on node n), so
the model grows with components x eligible nodes, not with instances. Identical nodes
(same site, labels, capacity and free capacity) are merged into classes when the exact
model would be large, and the class counts are spread over the class's nodes afterwards
(instances that stay first, onto the nodes they run on; then largest instances first,
onto the least loaded node that holds them); a class whose spread fails is split back
into single nodes and the model re-solved, so hard constraints always hold.

Hard constraints: site (edge | cloud | a site | any), node labels, perNode (one instance
on every eligible Ready node), replicas, capacity (cpu, memory, gpu) summed over all
applications. NotReady nodes are not eligible.

Objective, lexicographic (each term dominates the next):
  1. WAN traffic: for every connection A -> B and every instance a of A, cost 1 when no
     instance of B runs at a's site (the SDK sends to same-site peers first);
  2. moves: instances not kept on the node they run on now (`current`);
  3. balance: the highest CPU utilisation of any node, in per-mille of its capacity.

Terms 1 and 2 are exact with classes too (term 1 depends on site counts only; term 2
counts, per class, min(current instances on its nodes, instances planned there), which
the spread realises); term 3 is modelled by a class's average utilisation and reached by
the spread up to rounding (exact when no class has several nodes: small problems).
`plan_cost` computes the three terms of finished plans, e.g. for a brute-force check.

Modules: `model` (inputs, internal components and node classes), `classes` (merging
identical nodes, splitting, spreading class counts onto nodes), `solve` (the CP-SAT model),
`naming` (instance names), `explain` (why no plan exists), `planner` (`place`), `cost`
(`plan_cost`).
"""

from edgecloud.platform.orchestrator.cost import plan_cost
from edgecloud.platform.orchestrator.model import PlacedInstance, PlacementError, PlacementNode
from edgecloud.platform.orchestrator.planner import EXACT_MAX_VARS, PEAK_TIME_S, place

__all__ = ["EXACT_MAX_VARS", "PEAK_TIME_S", "PlacedInstance", "PlacementError", "PlacementNode",
           "place", "plan_cost"]
