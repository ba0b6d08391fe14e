"""The study's tools inside other training stacks, one small module per host library.

hf_trainer  transformers.Trainer and its subclasses (TRL's SFTTrainer is one): the spectral
            regulariser as a mixin, and a TrainerCallback that logs adapter spectra through the
            trainer's logging and saves log-spaced adapter checkpoints
trackers    accelerate's experiment trackers (TensorBoard, W&B, MLflow, trackio) for
            `evilspectra train --report-to`

The Hugging Face model card of an adapter is evilspectra.card.
"""
