"""The bundled tiny MoE language model: its byte vocabulary, training corpus and training command.

The trained model lives in ``placer/bundled/tiny-moe/`` (weights, config, model card); ``moeplace
train-tiny`` rebuilds it from the Python standard library sources named in ``stdlib_manifest.json``.
"""

from pathlib import Path

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "bundled" / "tiny-moe"
# The repository's traces/ folder (bundled traces and their texts); present in a clone, not in a wheel.
REPO_TRACES_DIR = Path(__file__).resolve().parents[2] / "traces"
