"""moeplace's EPLB policy on tensors shaped as vLLM passes them, and what vLLM then does with the answer.

The contract is vLLM's ``AbstractEplbPolicy.rebalance_experts`` (``vllm/distributed/eplb/policy/abstract.py``):
vLLM 0.19-0.33 pass ``weight`` [layers, logical experts] (the load window, ``.cpu()``), ``num_replicas``,
``num_groups``, ``num_nodes``, ``num_ranks`` and the current ``physical_to_logical_map`` (``.cpu()``), and take back
one int64 CPU tensor [layers, num_replicas] (``async_worker.run_rebalance_experts`` asserts the CPU device); vLLM
0.13-0.18 take back ``(phy2log, log2phy, logcnt)`` on ``weight``'s device and pad ``log2phy`` with -1 to their
own width (``EplbState.rearrange``). vLLM itself is not installed here: the tests build the same tensors and repeat
what vLLM does with the answer.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from placer.integrations import vllm_eplb
from placer.integrations.vllm_eplb import (
    MoeplaceEplbPolicy, MoeplaceEplbPolicyTriple, gpu_max_loads, inverse_maps, policy_for, rebalance, repair,
)

L, E, R, G = 3, 16, 4, 4       # 3 MoE layers, 16 experts + 4 redundant slots on 4 EP ranks
P = E + R


def _window(seed=0, skew=1.2) -> torch.Tensor:
    """A load window as vLLM sums it: int64 token counts per logical expert."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy((rng.zipf(skew + 1.0, size=(L, E)) * 50 + rng.integers(0, 40, size=(L, E))).astype(np.int64))


def _initial_map() -> torch.Tensor:
    """vLLM's initial map (``build_initial_global_physical_to_logical_map``): experts in order, then i mod E."""
    return (torch.arange(P) % E).repeat(L, 1).to(torch.int64)


def _moves(new: np.ndarray, old: np.ndarray, gpus: int) -> int:
    """Copies loaded onto a GPU that did not hold the expert (placer.core.moves)."""
    from placer.core.moves import count_moves
    from placer.core.placement import Placement

    E = int(max(new.max(), old.max())) + 1
    return count_moves(Placement(old, gpus, E), Placement(new, gpus, E)).total


def _check_map(phy2log: np.ndarray) -> None:
    assert phy2log.shape == (L, P) and phy2log.dtype == np.int64
    for row in phy2log:
        assert np.unique(row).size == E  # every expert has a slot


def test_signature_is_vllms():
    """The parameter names and order of vLLM 0.33.0's AbstractEplbPolicy.rebalance_experts (a classmethod)."""
    for cls in (MoeplaceEplbPolicy, MoeplaceEplbPolicyTriple):
        params = list(inspect.signature(cls.rebalance_experts).parameters)
        assert params == ["weight", "num_replicas", "num_groups", "num_nodes", "num_ranks",
                          "old_global_expert_indices"], cls
        assert isinstance(inspect.getattr_static(cls, "rebalance_experts"), classmethod)
        assert inspect.signature(cls.rebalance_experts).parameters["old_global_expert_indices"].default is None


def test_current_contract_as_vllm_calls_it():
    """vLLM >= 0.19: weight and the current map on the CPU, one int64 CPU tensor back, copied into the state."""
    window, state = _window(), _initial_map()
    new = MoeplaceEplbPolicy.rebalance_experts(window.cpu(), P, 1, 1, G, state.cpu())
    assert isinstance(new, torch.Tensor) and new.dtype == torch.int64 and new.device == torch.device("cpu")
    _check_map(new.numpy())
    state.copy_(new)  # what EplbState does with an unchanged number of slots
    # Balanced at least as well as DeepSeek's EPLB (the best baseline is auto's start), summed over layers.
    from placer.core.topology import preset
    from solvers import PlacementProblem, SolveOptions, get_solver

    load = window.numpy().astype(float)
    eplb = get_solver("eplb")(PlacementProblem(load, preset(G), num_redundant=R), SolveOptions()).phy2log_LP
    assert gpu_max_loads(new.numpy(), load, G).sum() <= gpu_max_loads(eplb, load, G).sum() + 1e-9
    report = MoeplaceEplbPolicy.last_report
    assert report.layers_changed + report.layers_kept == L and report.max_over_mean_after >= 1.0


def test_triple_contract_of_vllm_0_13_to_0_18():
    """(phy2log, log2phy, logcnt): int64, on weight's device, log2phy [L, E, R + 1] padded with -1 and consistent
    with phy2log; EplbState then pads log2phy to its own width (MAX_EXPERT_REDUNDANCY + 1 = 1024 columns)."""
    window = _window(1)
    phy2log, log2phy, logcnt = MoeplaceEplbPolicyTriple.rebalance_experts(window, P, 1, 1, G)   # 0.13: no old map
    for t in (phy2log, log2phy, logcnt):
        assert t.dtype == torch.int64 and t.device == window.device
    assert tuple(log2phy.shape) == (L, E, R + 1) and tuple(logcnt.shape) == (L, E)
    p2l, l2p, cnt = phy2log.numpy(), log2phy.numpy(), logcnt.numpy()
    _check_map(p2l)
    for l in range(L):
        np.testing.assert_array_equal(cnt[l], np.bincount(p2l[l], minlength=E))
        for e in range(E):
            slots = l2p[l, e][l2p[l, e] != -1]
            assert slots.tolist() == np.nonzero(p2l[l] == e)[0].tolist()   # increasing slot order
            assert (l2p[l, e][cnt[l, e]:] == -1).all()                       # padding after the valid entries
    padded = torch.nn.functional.pad(log2phy, (0, 1024 - log2phy.shape[-1]), value=-1)
    assert padded.shape[-1] == 1024
    # 0.15-0.18 pass the current map (on the device): accepted the same way.
    again = MoeplaceEplbPolicyTriple.rebalance_experts(window, P, 1, 1, G, phy2log)
    assert torch.equal(again[0], phy2log)  # same load, current map already this good: nothing moves


def test_inverse_maps_by_hand():
    log2phy, logcnt = inverse_maps(np.array([[1, 0, 0, 2, 3, 1]]), 4, 3)
    assert logcnt.tolist() == [[2, 2, 1, 1]]
    assert log2phy.tolist() == [[[1, 2, -1], [0, 5, -1], [3, -1, -1], [4, -1, -1]]]


def test_migration_keeps_what_does_not_pay_and_moves_little():
    load = _window(2).numpy().astype(float)
    first, _ = rebalance(load, P, 1, G)
    # Same load again: every layer kept, nothing moves.
    same, rep = rebalance(load, P, 1, G, first)
    np.testing.assert_array_equal(same, first)
    assert rep.layers_kept == L and rep.copies_moved == 0
    # Layer 1's hottest expert gets much hotter: layer 1 is re-placed, the others stay as they are.
    hot = load.copy()
    hot[1, np.argmin(hot[1])] = hot[1].sum()
    out, rep = rebalance(hot, P, 1, G, first)
    assert rep.layers_changed == 1 and rep.layers_kept == L - 1
    np.testing.assert_array_equal(out[[0, 2]], first[[0, 2]])
    assert gpu_max_loads(out, hot, G)[1] < gpu_max_loads(first, hot, G)[1]
    # Aligning GPUs and keeping slots moves no more copies than the solver's own names, at the same GPU loads.
    raw, _ = rebalance(hot, P, 1, G)
    assert rep.copies_moved == _moves(out, first, G) <= _moves(raw, first, G)
    np.testing.assert_allclose(gpu_max_loads(out, hot, G)[1], gpu_max_loads(raw, hot, G)[1])


def test_repair_by_hand():
    """GPU 0 holds experts 0 and 1 (load 5 each), GPU 1 experts 2 and 3 (1 each): one swap balances, two copies
    move. A swap that would put a second copy of an expert on a GPU is never made."""
    old = np.array([0, 1, 2, 3])
    out = repair(old, np.array([5.0, 5.0, 1.0, 1.0]), 2, target=6.0)
    assert gpu_max_loads(out[None], np.array([[5.0, 5.0, 1.0, 1.0]]), 2).tolist() == [6.0]
    assert _moves(out[None], old[None], 2) == 2
    # Expert 0 has a copy on each GPU (5 + 5): only swaps that would double it on one GPU could help; none is made.
    dup = np.array([0, 1, 0, 2])
    load = np.array([10.0, 4.0, 1.0])
    np.testing.assert_array_equal(repair(dup, load, 2, target=7.5), dup)


def test_current_map_of_another_shape_or_zero_load():
    """An elastic scale-up or -down changes num_replicas: the current map no longer fits and is not used. A
    profiling pass sends zero load: a valid map, and the current one is kept."""
    window = _window(3)
    other = (torch.arange(P + G) % E).repeat(L, 1)
    new = MoeplaceEplbPolicy.rebalance_experts(window, P, 1, 1, G, other)
    _check_map(new.numpy())
    zero = MoeplaceEplbPolicy.rebalance_experts(torch.zeros(L, E, dtype=torch.int64), P, 1, 1, G, _initial_map())
    assert torch.equal(zero, _initial_map())
    _check_map(MoeplaceEplbPolicy.rebalance_experts(torch.zeros(L, E, dtype=torch.int64), P, 1, 1, G).numpy())


def test_two_nodes_and_float_weights():
    window = _window(4).to(torch.float32) / 7.0          # rates, float32
    new = MoeplaceEplbPolicy.rebalance_experts(window, P, 2, 2, G)
    _check_map(new.numpy())


def test_policy_for_vllm_versions():
    assert policy_for("0.13.0") is MoeplaceEplbPolicyTriple and policy_for("0.18.1") is MoeplaceEplbPolicyTriple
    assert policy_for("0.19.0") is MoeplaceEplbPolicy and policy_for("0.33.0") is MoeplaceEplbPolicy
    assert policy_for("1.0.0rc1.dev3+g1234") is MoeplaceEplbPolicy


def test_importing_needs_neither_vllm_nor_torch():
    code = ("import sys; import placer.integrations.vllm_eplb as m; "
            "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, sorted(sys.modules); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.fixture
def fake_vllm(monkeypatch):
    """The part of vLLM register() touches: vllm.distributed.eplb.policy with EPLB_POLICIES and AbstractEplbPolicy."""
    import abc

    class AbstractEplbPolicy(abc.ABC):
        pass

    mods = {name: types.ModuleType(name) for name in
            ("vllm", "vllm.distributed", "vllm.distributed.eplb", "vllm.distributed.eplb.policy")}
    mods["vllm.distributed.eplb.policy"].EPLB_POLICIES = {"default": object}
    mods["vllm.distributed.eplb.policy"].AbstractEplbPolicy = AbstractEplbPolicy
    mods["vllm.distributed.eplb"].policy = mods["vllm.distributed.eplb.policy"]
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "0.33.0" if name == "vllm" else "0")
    return mods["vllm.distributed.eplb.policy"]


def test_register_installs_the_policy_under_default(fake_vllm, monkeypatch):
    cls = vllm_eplb.register()
    assert fake_vllm.EPLB_POLICIES["default"] is cls is MoeplaceEplbPolicy
    assert issubclass(cls, fake_vllm.AbstractEplbPolicy)
    tuned = vllm_eplb.register(MoeplaceEplbPolicyTriple, solver="greedy", time_limit_s=0.1)
    assert fake_vllm.EPLB_POLICIES["default"] is tuned and issubclass(tuned, MoeplaceEplbPolicyTriple)
    assert tuned.solver == "greedy" and tuned.time_limit_s == 0.1 and MoeplaceEplbPolicyTriple.solver == "auto"
    with pytest.raises(TypeError, match="unknown setting"):
        vllm_eplb.register(time_limit=1)
    # The plug-in vLLM loads in every process does nothing unless asked.
    fake_vllm.EPLB_POLICIES["default"] = object
    monkeypatch.delenv(vllm_eplb.ENV_ENABLE, raising=False)
    vllm_eplb.vllm_plugin()
    assert fake_vllm.EPLB_POLICIES["default"] is object
    monkeypatch.setenv(vllm_eplb.ENV_ENABLE, "1")
    monkeypatch.setenv(vllm_eplb.ENV_TIME_LIMIT, "0.25")
    vllm_eplb.vllm_plugin()
    installed = fake_vllm.EPLB_POLICIES["default"]
    assert issubclass(installed, MoeplaceEplbPolicy) and installed.time_limit_s == 0.25
    monkeypatch.setenv(vllm_eplb.ENV_TOLERANCE, "lots")
    with pytest.raises(ValueError, match="MOEPLACE_VLLM_EPLB_TOLERANCE='lots' is not a number"):
        vllm_eplb.vllm_plugin()


def test_entry_point_is_declared():
    """vLLM finds general plug-ins through this entry point group (vllm/plugins/__init__.py)."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    section = text.split('[project.entry-points."vllm.general_plugins"]\n', 1)[1].split("\n[", 1)[0]
    assert section.strip() == 'moeplace_eplb = "placer.integrations.vllm_eplb:vllm_plugin"'
    module, func = section.split('"')[1].split(":")
    assert callable(getattr(__import__(module, fromlist=[func]), func))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_devices_on_a_gpu():
    """0.13-0.18 pass the window on the GPU and expect the answer there; 0.19+ pass CPU tensors and want CPU back."""
    window = _window(5).cuda()
    out = MoeplaceEplbPolicyTriple.rebalance_experts(window, P, 1, 1, G, _initial_map().cuda())
    assert all(t.device == window.device for t in out)
    assert MoeplaceEplbPolicy.rebalance_experts(window.cpu(), P, 1, 1, G).device == torch.device("cpu")


def test_every_rank_computes_the_same_map_whatever_its_clock(monkeypatch):
    """vLLM calls the policy on every rank with the same (all-reduced) window and moves weights by each rank's own
    answer: the answers must agree. The solve stops on its nominal budgets only, never on the wall clock, so a rank
    whose clock runs fast (a loaded machine: here every look at the clock finds a second gone) computes the same map."""
    import time

    window, state = _window(7), _initial_map()
    calm = MoeplaceEplbPolicy.rebalance_experts(window, P, 1, 1, G, state)
    now = [time.monotonic()]

    def busy_clock() -> float:
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(time, "monotonic", busy_clock)
    loaded = MoeplaceEplbPolicy.rebalance_experts(window, P, 1, 1, G, state)
    assert torch.equal(calm, loaded)


def test_copies_that_cannot_stay_apart_fall_back_to_deepseeks_eplb(caplog):
    """vLLM accepts more redundant slots than GPUs can hold apart (8 copies of 4 experts on 2 GPUs); moeplace's
    solvers refuse them, so the policy places them with DeepSeek's EPLB, as vLLM would, and logs it."""
    import logging

    weight = torch.tensor([[40, 10, 5, 1], [3, 30, 3, 9]], dtype=torch.int64)
    with caplog.at_level(logging.WARNING, logger="moeplace.vllm_eplb"):
        new = MoeplaceEplbPolicy.rebalance_experts(weight, 12, 1, 1, 2)
        again = MoeplaceEplbPolicy.rebalance_experts(weight, 12, 1, 1, 2, (torch.arange(12) % 4).repeat(2, 1))
    for out in (new, again):
        assert out.shape == (2, 12) and out.dtype == torch.int64
        assert all(np.unique(row).size == 4 for row in out.numpy())
    np.testing.assert_array_equal(new.numpy(), vllm_eplb.eplb_layout(weight.numpy().astype(float), 12, 1, 2))
    assert "cannot hold every copy of an expert on a GPU of its own" in caplog.text
    assert any(r.levelno == logging.WARNING and r.name == "moeplace.vllm_eplb" for r in caplog.records)
    triple = MoeplaceEplbPolicyTriple.rebalance_experts(weight, 12, 1, 1, 2)
    assert triple[2].sum(axis=1).tolist() == [12, 12]


def test_register_warms_the_kernels_up(fake_vllm, monkeypatch):
    calls = []
    monkeypatch.setattr(vllm_eplb, "warm_up", lambda solver="auto", time_limit_s=0.5: calls.append(solver) or 0.0)
    vllm_eplb.register()
    vllm_eplb.register(solver="greedy", warm=False)
    monkeypatch.setenv(vllm_eplb.ENV_ENABLE, "1")
    monkeypatch.setenv(vllm_eplb.ENV_WARM_UP, "0")
    vllm_eplb.vllm_plugin()
    monkeypatch.setenv(vllm_eplb.ENV_WARM_UP, "1")
    monkeypatch.setenv(vllm_eplb.ENV_SOLVER, "cpsat")
    vllm_eplb.vllm_plugin()
    assert calls == ["auto", "cpsat"]


def test_after_the_warm_up_the_policy_compiles_nothing():
    """In a fresh process: warm_up(), then a rebalance of another shape (two nodes, copies, a current map) finds
    every kernel compiled or loaded already."""
    code = (
        "import numpy as np, torch\n"
        "from placer.integrations.vllm_eplb import MoeplaceEplbPolicy, warm_up\n"
        "from solvers.warmup import compiled_kernels\n"
        "warm_up()\n"
        "n = compiled_kernels()\n"
        "w = torch.from_numpy((np.random.default_rng(1).lognormal(0, 1, (4, 64)) * 100).astype(np.int64))\n"
        "MoeplaceEplbPolicy.rebalance_experts(w, 72, 1, 2, 8, (torch.arange(72) % 64).repeat(4, 1))\n"
        "assert n > 0 and compiled_kernels() == n, (n, compiled_kernels())\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
