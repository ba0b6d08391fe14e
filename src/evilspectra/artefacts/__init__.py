"""The artefacts contract: every file one stage writes and another reads (docs/architecture.md).

    paths    file names and the path objects that spell them (RunDir, SweepDir, EvalDir, AuditDir,
             AdapterDir); adapter listing
    records  one pydantic model per JSON artefact, used by its writer and its readers
    io       safe writers (temp file + rename), the run lock, a full disk, record reading/writing
    machine  the provenance a manifest records (machine, library versions)

No other module spells a file name or parses a contract file; `evilspectra.rundir` re-exports the
public names of all four under the import path of earlier releases.
"""
