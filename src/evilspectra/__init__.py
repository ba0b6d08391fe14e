"""evilspectra: how the optimiser of a LoRA fine-tune amplifies or suppresses emergent misalignment.

Stages, one module each, data flowing one way through a run directory:
config -> data -> models -> optim -> train (+ spectra regulariser) -> spectra -> evaluate
-> sweep -> analysis -> report; `toy` is the embedded CPU world; `audit` checks one fine-tune.
"""

__version__ = "0.1.0"
