"""``moeplace replay``: run the real expert-parallel data path of a trace under placements and prove it correct.

- ``plan``: pure per-step dispatch plans (which token goes where, split sizes, per-rank expert work).
- ``experts``: SwiGLU expert weights (seeded random, or a checkpoint's) and the initial hidden states.
- ``reference``: the replayed routing, the step schedule, the single-process reference and the check.
- ``datapath``: the tensor side shared by every backend (pack, unpack, compute, timers).
- ``worker``: one rank over torch.distributed (gloo, NCCL); ``launch``: starting and watching the ranks.
- ``virtual``: all ranks in one process, communication modelled.
- ``report``: measurements and the report comparing placements.
"""
