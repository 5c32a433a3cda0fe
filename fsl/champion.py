"""The champion rule, pure: what makes two val accuracies comparable (the registry protocol) and
when a new version takes the `champion` alias. `fsl.tracking.model_registry` applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsl.config import TrainConfig


def registry_protocol(cfg: TrainConfig, fingerprint: str, precision: str) -> dict[str, Any]:
    """What must match for two val accuracies to be comparable (the champion rule)."""
    shape = cfg.test_shape
    return {"data_fingerprint": fingerprint, "ways": shape.ways, "shots": shape.shots, "queries": shape.queries,
            "val_episodes": cfg.val_episodes, "val_seed": cfg.val_seed, "precision": precision}


def champion_decision(new_val: float, new_protocol: dict, champion: dict | None) -> tuple[bool, str]:
    """Whether a new version takes the champion alias, and why. Pure: the rule in one place.

    champion: {"val_acc": float, "protocol": dict} of the current champion, or None.
    """
    if champion is None:
        return True, "first version under this protocol: it becomes champion"
    if champion["protocol"] != new_protocol:
        differ = sorted(k for k in set(new_protocol) | set(champion["protocol"])
                        if new_protocol.get(k) != champion["protocol"].get(k))
        return False, f"protocol differs from the champion's ({', '.join(differ)}): champion left alone"
    if new_val > champion["val_acc"]:
        return True, f"val accuracy {new_val:.2f}% beats the champion's {champion['val_acc']:.2f}%"
    return False, f"val accuracy {new_val:.2f}% does not beat the champion's {champion['val_acc']:.2f}%"
