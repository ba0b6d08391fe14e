"""evilspectra: how the optimiser of a LoRA fine-tune amplifies or suppresses emergent misalignment.

Stages, one module each, data flowing one way through a run directory:
config -> data -> models -> optim -> train (+ spectra regulariser) -> spectra -> evaluate
-> sweep -> analysis -> report; `toy` is the embedded CPU world; `audit` checks one fine-tune.

Public API. The package root exports only `__version__`: importing `evilspectra` (the CLI does on
every start) loads no torch, and the stage functions keep the names of their modules (`train`,
`evaluate`). The supported names are imported from their modules:

    evilspectra (console script)           the CLI: `evilspectra --help`
    evilspectra.config                     RunConfig, EvalSettings, load_run_config
    evilspectra.train                      train(cfg, out) -> the run directory
    evilspectra.evaluate.runner            evaluate(...) -> the EvalSummary it writes
    evilspectra.sweep                      SweepSpec, run_sweep
    evilspectra.analysis                   analyze(sweep_dir)
    evilspectra.report                     write_report(sweep_dir)
    evilspectra.spectra                    adapter_spectra(adapter_dir)
    evilspectra.audit                      audit(...)
    evilspectra.rundir                     RunDir, SweepDir, EvalDir and the records of every artefact
    evilspectra.registry                   MODELS, QUESTION_SETS, JUDGES, DATASETS (plugins register here)
    evilspectra.data                       load_dataset_spec
    evilspectra.models                     resolve_model
    evilspectra.integrations.hf_trainer    SpectraCallback, spectral_regularised (HF Trainer / TRL)
    evilspectra.inspect_task               the Inspect task `evilspectra/em`

The package ships `py.typed`: these names are type-checked (mypy, `make lint`).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
