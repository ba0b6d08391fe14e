"""EM evaluation, in the inspect_ai split: questions (dataset) -> sampling (solver) -> judge
(scorer) -> metrics; `runner` wires them to a run directory."""
