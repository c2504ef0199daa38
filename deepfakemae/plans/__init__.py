"""Experiment plans: the paper's tables as sequences of LightningCLI stage runs.

Each variant of a plan runs the stages ``pretrain → finetune → mapping → detector`` in its own run
directory ``<run root>/<table>/<variant>`` (the ``RUN_DIR`` the stage configs read), or ``reuse``s
a stage of another variant. :mod:`.load` reads plan files, :mod:`.jobs` builds the job graph and
each stage's status, :mod:`.runner` runs the pending stages; ``deepfakemae run``
(:mod:`deepfakemae.commands.run`) is the command line.
"""

from deepfakemae.plans.jobs import (
    STAGE_COMMAND,
    STAGE_INPUTS,
    Job,
    Resolver,
    plan_jobs,
    stage_output,
    stage_state_of,
    stage_status,
)
from deepfakemae.plans.load import (
    BRANCH_STAGES,
    DETECTOR,
    PLAN_RECORD,
    PRETRAIN,
    RERUN_KEY,
    STAGES,
    TABLES_DIR,
    Plan,
    PlanError,
    StageSpec,
    experiments_dir,
    flag_list,
    load_plan,
    locate,
    merge_args,
    plan_from_record,
)
from deepfakemae.plans.runner import StageFailed, run_plan, write_plan_record

__all__ = ["BRANCH_STAGES", "DETECTOR", "PRETRAIN", "PLAN_RECORD", "RERUN_KEY", "STAGES", "STAGE_COMMAND", "STAGE_INPUTS", "TABLES_DIR", "Job", "Plan",
           "PlanError", "Resolver", "StageSpec", "experiments_dir", "flag_list", "load_plan",
           "locate", "merge_args", "plan_from_record", "plan_jobs", "run_plan", "StageFailed",
           "stage_output", "stage_state_of", "stage_status", "write_plan_record"]
