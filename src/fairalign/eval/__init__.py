"""Evaluation of a policy on its task, for every task: run.py (the engine, `Task.evaluate`, what a target
names), cli.py (`fairalign eval`), dialogue_cli.py (`fairalign eval-dialogue`, RLPA's flags and table)."""
