"""The spectral regulariser and adapter spectra inside `transformers.Trainer` (and its subclasses,
TRL's `SFTTrainer` included).

    from evilspectra.integrations.hf_trainer import SpectraCallback, spectral_regularised
    trainer = spectral_regularised(SFTTrainer)(model=peft_model, args=args, train_dataset=ds, spectral_reg_weight=1.0)
    trainer.add_callback(SpectraCallback(trainer, every=10, checkpoints="log"))

`spectral_regularised(cls)` subclasses a trainer with `SpectralRegMixin`, which overrides the two
methods the Trainer documents for subclassing: `training_step` adds weight * R (the same
`SpectralRegulariser` as `evilspectra train`, so the same value and gradient) through one extra
backward on the first micro-batch of every optimiser step, exactly as `train` does, so the logged
`loss` stays the plain training loss; `log` adds the mean R since the last log as `spectral_reg`
(the tracker names `evilspectra train` uses too: loss, learning_rate, spectral_reg, spectra/<metric>).

`SpectraCallback` computes the adapter's spectral metrics (mean over trained modules, as
`evilspectra spectra` aggregates them) every N optimiser steps and logs them through `trainer.log`,
so every `report_to` backend (TensorBoard, W&B, MLflow, trackio, ...) receives them. It can also
save adapter checkpoints on `train`'s schedule into OUTPUT_DIR/checkpoints/step-NNNNNN/ and the final
adapter into OUTPUT_DIR/adapter/: the run-directory layout `evilspectra spectra OUTPUT_DIR` reads.

Both put the trainer's trackio callback on the optimiser-step axis (transformers' own lets trackio
count log calls, so extra logs such as the spectra push every later point to a later step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from peft import PeftModel
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TrackioCallback
from transformers.integrations.integration_utils import rewrite_logs

from evilspectra.artefacts.paths import RunDir, save_adapter
from evilspectra.errors import ConfigError
from evilspectra.regulariser import SpectralRegulariser, lora_factor_pairs
from evilspectra.schedule import checkpoint_steps
from evilspectra.spectra_table import mean_metrics, model_spectra

SPECTRA_PREFIX = "spectra/"  # logged keys: spectra/frobenius_nuclear, spectra/stable_rank, ...
REG_KEY = "spectral_reg"
# the Trainer's end-of-run totals, which transformers' TrackioCallback leaves out of the step logs
RUN_TOTALS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")


def require_lora(model: torch.nn.Module | None) -> PeftModel:
    """`model`, a PEFT model with at least one LoRA module; else a one-line ConfigError (None: a
    Trainer given no model)."""
    if not isinstance(model, PeftModel):
        raise ConfigError(
            f"evilspectra needs a PEFT LoRA model, got {type(model).__name__}: "
            "wrap it with peft.get_peft_model(model, LoraConfig(...)) or pass peft_config= to SFTTrainer"
        )
    if not lora_factor_pairs(model):
        kind = type(model.peft_config[model.active_adapter]).__name__
        raise ConfigError(f"evilspectra needs LoRA adapters, but the PEFT model's active adapter is a {kind}")
    return model


class StepTrackioCallback(TrackioCallback):
    """transformers' TrackioCallback logging at the trainer's global step, as its TensorBoard, W&B and
    MLflow callbacks do, instead of trackio's own count of log calls."""

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if not self._initialized:
            self.setup(args, state, model)
        if state.is_world_process_zero:
            steps = {k: v for k, v in logs.items() if k not in RUN_TOTALS}
            self._trackio.log({**rewrite_logs(steps), "train/global_step": state.global_step}, step=state.global_step)


def align_tracker_steps(trainer: Trainer) -> None:
    """Swap the trainer's TrackioCallback (if any) for StepTrackioCallback; the others already log at the step."""
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is TrackioCallback:
            callbacks[i] = StepTrackioCallback()


# the mixin's Trainer attributes (model, state, accelerator, log) type-check against the Trainer it is
# mixed into (spectral_regularised); at run time it is a plain class before that trainer in the MRO
if TYPE_CHECKING:
    _MixedInto = Trainer
else:
    _MixedInto = object


class SpectralRegMixin(_MixedInto):
    """Adds weight * R to a Trainer's loss, R = SpectralRegulariser(model)() (see the module docstring).

    Keyword arguments (taken before the trainer's own): spectral_reg_weight (0 turns it off),
    spectral_reg_method (gram | qr | cholesky), spectral_reg_aggregation (mean | sum),
    spectral_reg_every (apply on optimiser steps 1-based divisible by this).
    """

    def __init__(
        self,
        *args,
        spectral_reg_weight: float = 1.0,
        spectral_reg_method: str = "gram",
        spectral_reg_aggregation: str = "mean",
        spectral_reg_every: int = 1,
        **kwargs,
    ):
        if spectral_reg_weight < 0 or spectral_reg_every < 1:
            raise ConfigError(
                f"spectral_reg: weight must be >= 0 and every >= 1, got {spectral_reg_weight} and {spectral_reg_every}"
            )
        super().__init__(*args, **kwargs)
        model = require_lora(self.model)  # after the trainer's init: SFTTrainer wraps a model given with peft_config
        align_tracker_steps(self)
        self.spectral_reg_weight, self.spectral_reg_every = spectral_reg_weight, spectral_reg_every
        # built now to validate method and aggregation; it holds the factor parameters themselves,
        # which stay the same objects when the Trainer moves the model to its device
        self.spectral_regulariser = SpectralRegulariser(
            model, method=spectral_reg_method, aggregation=spectral_reg_aggregation
        )
        self._reg_step = -1  # the global_step whose regulariser was applied (once per optimiser step)
        self._reg_values: list[float] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step + 1  # the optimiser step being accumulated, 1-based as in `train`
        if self.spectral_reg_weight > 0 and self._reg_step != step and step % self.spectral_reg_every == 0:
            self._reg_step = step
            reg = self.spectral_regulariser()
            self.accelerator.backward(self.spectral_reg_weight * reg)
            self._reg_values.append(reg.item())
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self._reg_values and "loss" in logs:  # training logs only, not eval or our spectra
            logs[REG_KEY] = sum(self._reg_values) / len(self._reg_values)
            self._reg_values.clear()
        super().log(logs, *args, **kwargs)


def spectral_regularised(trainer_cls: type[Trainer]) -> type[Trainer]:
    """`trainer_cls` with SpectralRegMixin: takes spectral_reg_* keyword arguments (see the mixin)."""
    return type(f"SpectralRegularised{trainer_cls.__name__}", (SpectralRegMixin, trainer_cls), {})


def spectra_logs(model: torch.nn.Module, method: str = "qr") -> dict[str, float]:
    """{"spectra/<metric>": mean over trained modules} of a PEFT model's active LoRA adapter.

    The same numbers as `evilspectra spectra` (aggregate_spectra) on the adapter the model saves.
    """
    return {f"{SPECTRA_PREFIX}{k}": v for k, v in mean_metrics(model_spectra(model, method)).items()}


class SpectraCallback(TrainerCallback):
    """Log the adapter's spectral metrics every `every` optimiser steps and at the last one.

    trainer: the Trainer to log through (its `log`, so every report_to backend gets the metrics).
    checkpoints: "none", "log" (train's schedule: 10, 20, 30, 40, 53, ...), every N steps, or a list
    of steps; the adapter is saved at each into OUTPUT_DIR/checkpoints/step-NNNNNN/ (metrics are
    logged there too), and the final one into OUTPUT_DIR/adapter/.
    """

    def __init__(
        self, trainer: Trainer, every: int = 10, checkpoints: str | int | list[int] = "none", method: str = "qr"
    ):
        if every < 1:
            raise ConfigError(f"SpectraCallback: every must be >= 1, got {every}")
        require_lora(trainer.model)
        align_tracker_steps(trainer)
        self.trainer, self.every, self.checkpoints, self.method = trainer, every, checkpoints, method
        self.save_at: set[int] = set()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.save_at = set(checkpoint_steps(self.checkpoints, state.max_steps))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        step, model = state.global_step, kwargs["model"]
        if step in self.save_at and state.is_world_process_zero:
            save_adapter(model, _run_dir(args).checkpoint(step))
        if step % self.every == 0 or step in self.save_at or step == state.max_steps:
            # Trainer.log itself, not an override: SFTTrainer.log would hand its running token
            # metrics to this call and SpectralRegMixin.log its regulariser values. Logging resets
            # control.should_log, which would drop the trainer's own loss log due at this step.
            should_log = control.should_log
            Trainer.log(self.trainer, spectra_logs(model, self.method))
            control.should_log = should_log

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if self.checkpoints != "none" and state.is_world_process_zero:
            save_adapter(kwargs["model"], _run_dir(args).adapter)


def _run_dir(args: TrainingArguments) -> RunDir:
    """The Trainer's output dir, where SpectraCallback saves the adapters (RUN/checkpoints, RUN/adapter)."""
    if args.output_dir is None:
        raise ConfigError("SpectraCallback saves adapters under TrainingArguments.output_dir: set it")
    return RunDir(args.output_dir)
