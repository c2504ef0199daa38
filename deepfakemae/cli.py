"""The ``deepfakemae`` command.

Data tools are plain subcommands (``preprocess``, ``cache verify``, ``demo-data``, ``report``,
``premise``);
training and evaluation are LightningCLI's ``fit`` / ``validate`` / ``test`` driven by YAML
configs in ``experiments/``. ``deepfakemae score --video ...`` scores videos end to end
(``predict --video``, its old spelling, still works with a note; LightningCLI's own predict
wrote nothing and is not offered). Every tool's command is a module of ``deepfakemae/commands/``
(the checks of ``cache verify`` are ``faces/verify.py``, the builder of ``demo-data`` is
``synth/demo_data.py``). An error a user can act on
(:class:`deepfakemae.errors.DeepfakeMAEError`) ends any command with one line on stderr and its
exit code (2 unless the error says otherwise).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from deepfakemae.errors import reports_errors

#: subcommand -> (module, add-arguments function, run function, help)
TOOLS = {
    "preprocess": ("deepfakemae.commands.preprocess", "add_preprocess_arguments", "run_preprocess_command",
                   "detect, align and cache faces of videos or a whole dataset"),
    "cache": ("deepfakemae.commands.cache", "add_cache_arguments", "run_cache_command",
              "check a face cache: `cache verify DIR [--repair]`"),
    "demo-data": ("deepfakemae.commands.demo_data", "add_demo_data_arguments", "run_demo_data_command",
                  "build the embedded FF++-layout demo dataset from the bundled GRID clips"),
    "demo": ("deepfakemae.commands.demo", "add_demo_arguments", "run_demo_command",
             "the whole method on the embedded demo set (make demo)"),
    "run": ("deepfakemae.commands.run", "add_run_arguments", "run_plan_command",
            "run a paper-table plan (experiments/tables/tableN.yaml): its stages, resumably"),
    "report": ("deepfakemae.commands.report", "add_report_arguments", "run_report_command",
               "tables of results_test.json beside the paper's numbers (Markdown + CSV)"),
    "premise": ("deepfakemae.commands.premise", "add_premise_arguments", "run_premise_command",
                "the paper's premise measured: masked-part reconstruction error of a stage-1 "
                "model, real vs fake (AUC, paired)"),
    "score": ("deepfakemae.commands.score", "add_score_arguments", "run_score_command",
              "score videos: `score --video clip.mp4 [--run-dir runs/demo/main]` "
              "(JSON/CSV, --explain figures)"),
}
#: old spellings of a tool (a one-line note on stderr names the new one)
ALIASES = {"predict": "score"}
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _tool_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, add_name, run_name, help_text = TOOLS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"deepfakemae {name}", description=help_text)
    getattr(module, add_name)(parser)
    return parser, getattr(module, run_name)


def _usage() -> str:
    lines = ["usage: deepfakemae <command> [options]", "", "commands:"]
    for name in LIGHTNING_COMMANDS:
        lines.append(f"  {name:<11} LightningCLI {name} (see `deepfakemae {name} --help`)")
    for name, (_, _, _, help_text) in TOOLS.items():
        lines.append(f"  {name:<11} {help_text}")
    lines += [f"  {alias:<11} old spelling of `{name}`" for alias, name in ALIASES.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepfakemae`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    os.environ.setdefault("WANDB_SILENT", "true")  # no W&B banner lines on every run
    command = ALIASES.get(args[0], args[0])
    if command != args[0]:
        print(f"note: `deepfakemae {args[0]}` is now `deepfakemae {command}`", file=sys.stderr)
    if command in TOOLS:  # each tool's run function reports its errors (reports_errors)
        parser, run = _tool_parser(command)
        return int(run(parser.parse_args(args[1:])) or 0)
    if command in LIGHTNING_COMMANDS:
        # argv None: LightningCLI reads sys.argv itself (and names the program correctly)
        return reports_errors(command)(_lightning)(command, None if argv is None else args)
    print(f"deepfakemae: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


def _lightning(command: str, argv: list[str] | None) -> int:
    """LightningCLI ``fit`` / ``validate`` / ``test``; a graceful stop on a signal exits 130 /
    143 naming the checkpoint to resume from."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from deepfakemae.callbacks import INTERRUPT_EXIT_CODES, LAST_INTERRUPT
    from deepfakemae.lightning_cli import run_lightning_cli

    try:
        run_lightning_cli(argv)
    except SIGTERMException:  # Lightning's graceful stop exits 0: say it was interrupted
        name = LAST_INTERRUPT.get("signal", "SIGTERM")
        saved = LAST_INTERRUPT.get("checkpoint")
        print(f"deepfakemae {command}: interrupted by {name}; "
              + (f"resume with --ckpt_path={saved}" if saved else "nothing was saved"),
              file=sys.stderr)
        return INTERRUPT_EXIT_CODES.get(name, 143)
    return 0


if __name__ == "__main__":
    sys.exit(main())
