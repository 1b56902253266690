"""Embedded demo data: procedurally rendered faces in the ABAW layouts (see generate.py)."""

from abaw_cli.data.demo.generate import SCALES, DemoPlan, generate_demo, plan_demo, run_job

__all__ = ["SCALES", "DemoPlan", "generate_demo", "plan_demo", "run_job"]
