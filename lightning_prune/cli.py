"""``lightning-prune``: LightningCLI's fit / validate / test, plus ``report``."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from lightning_prune.data import ImageDataModule
from lightning_prune.errors import ConfigError
from lightning_prune.module import ImageClassifier, checkpoint_path_exists


class PruneCLI(LightningCLI):
    """The data module's class count feeds the model, so YAML never states it twice."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")

    def before_fit(self) -> None:
        checkpoint_path_exists(self.config_init[self.subcommand].get("ckpt_path"))

    before_validate = before_test = before_fit


def run_cli(args: list[str] | None) -> None:
    PruneCLI(
        ImageClassifier,
        ImageDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> int:
    """Entry point; ``args`` defaults to ``sys.argv[1:]`` (tests pass their own)."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] == "report":
            from lightning_prune.report.cli import main as report_main

            return report_main(argv[1:])
        run_cli(None if args is None else argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
