"""moeplace: decide which GPU holds which expert of a Mixture-of-Experts model.

The package ``placer`` holds everything but the optimisation formulations (those live in ``solvers``).
"""

__version__ = "0.1.0"
