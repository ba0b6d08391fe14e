"""Test helper run under `accelerate launch`: train each (config, out) of a JSON job file in turn.

One launch covers several optimisers, since each process start costs seconds. With `--fail-rank R
--fail-step S`, rank R raises at its S-th loss computation (a fault on one rank only).
"""

import argparse
import json
import os

from evilspectra import train as train_module
from evilspectra.config import RunConfig

parser = argparse.ArgumentParser()
parser.add_argument("jobs")
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--fail-step", type=int, default=0)
args = parser.parse_args()

if int(os.environ["RANK"]) == args.fail_rank:
    plain_loss, calls = train_module.sft_loss_sum, []

    def failing_loss(*a, **kw):
        calls.append(1)
        if len(calls) == args.fail_step:
            raise RuntimeError("injected fault")
        return plain_loss(*a, **kw)

    train_module.sft_loss_sum = failing_loss

for job in json.loads(open(args.jobs).read()):
    train_module.train(RunConfig.model_validate(job["config"]), job["out"])
