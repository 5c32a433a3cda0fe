"""The champion rule, pure: what makes two val accuracies comparable (the registry protocol) and
when a new version takes the `champion` alias. `fsl.tracking.model_registry` applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsl.config import TrainConfig


def registry_protocol(cfg: TrainConfig, fingerprint: str, precision: str, content: str | None = None
                      ) -> dict[str, Any]:
    """What must match for two val accuracies to be comparable (the champion rule): the data (its
    fingerprint and, since fsl 0.2, the digest of its decoded contents, `DataSet.content_digest`),
    the val episodes' shape, number and seed, and the precision."""
    shape = cfg.test_shape
    return {"data_fingerprint": fingerprint, "ways": shape.ways, "shots": shape.shots, "queries": shape.queries,
            "val_episodes": cfg.val_episodes, "val_seed": cfg.val_seed, "precision": precision} | (
        {"data_content": content} if content else {})


PROTOCOL_KEYS_ADDED = ("data_content",)  # keys added after fsl 0.1: absent from older champions' protocols


def champion_decision(new_val: float, new_protocol: dict, champion: dict | None) -> tuple[bool, str]:
    """Whether a new version takes the champion alias, and why. Pure: the rule in one place.

    champion: {"val_acc": float, "protocol": dict} of the current champion, or None.
    """
    if champion is None:
        return True, "first version under this protocol: it becomes champion"
    # a key the champion's protocol predates (`data_content`, fsl 0.2) is not compared: champions
    # registered before it stay comparable
    old = champion["protocol"]
    compared = {k: v for k, v in new_protocol.items() if k in old or k not in PROTOCOL_KEYS_ADDED}
    if old != compared:
        differ = sorted(k for k in set(compared) | set(old) if compared.get(k) != old.get(k))
        return False, f"protocol differs from the champion's ({', '.join(differ)}): champion left alone"
    if new_val > champion["val_acc"]:
        return True, f"val accuracy {new_val:.2f}% beats the champion's {champion['val_acc']:.2f}%"
    return False, f"val accuracy {new_val:.2f}% does not beat the champion's {champion['val_acc']:.2f}%"
