"""moeplace inside serving stacks' own code: plug-ins that run moeplace's solvers where a stack calls its balancer.

- ``vllm_eplb``: an EPLB policy for vLLM (``rebalance_experts`` with vLLM's contract), importable without vLLM.
"""
