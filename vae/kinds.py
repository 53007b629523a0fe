"""The model kinds, named by what they can do. A new kind is one class in vae/models.py and one entry here:
the config's validation, the CLI's help, the search space and the error texts read their lists from KINDS.

No torch here: the config and `vae --help` read this table without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # the config's model.kind, the CLI's --model
    model: str  # its class in vae/models.py
    variational: bool  # a posterior and a prior: -ELBO, the IW bound, sampling, the IWAE objective
    searchable: bool  # the search may draw it (the search's objective is the validation -ELBO)
    convolutional: bool  # `channels` sets its width
    summary: str  # one phrase, for --help


KINDS = {
    k.name: k
    for k in (
        Kind("vae", "VAE", True, True, False, "the seed's MLP VAE"),
        Kind("ae", "AE", False, False, False, "the deterministic autoencoder"),
        Kind("conv-vae", "ConvVAE", True, True, True, "a small convolutional VAE"),
    )
}


def names(**properties: bool) -> tuple[str, ...]:
    """The kinds with these properties, in table order: names(variational=True) -> ("vae", "conv-vae")."""
    return tuple(n for n, k in KINDS.items() if all(getattr(k, p) == v for p, v in properties.items()))


def listed(kinds: tuple[str, ...]) -> str:
    """'vae or conv-vae', 'vae, ae or conv-vae': for error texts."""
    return kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} or {kinds[-1]}"
