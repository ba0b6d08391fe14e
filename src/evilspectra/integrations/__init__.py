"""The study's tools inside other training stacks, one small module per host library.

hf_trainer  transformers.Trainer and TRL's SFTTrainer: the spectral regulariser (a mixin) and a
            TrainerCallback that logs adapter spectra and saves log-spaced checkpoints
trackers    `evilspectra train --report-to`: TensorBoard, W&B, MLflow, trackio through accelerate
card        (evilspectra.card) Hugging Face model cards for adapters
"""
