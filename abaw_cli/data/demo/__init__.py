"""Embedded demo data: procedurally rendered faces in the ABAW layouts (see generate.py)."""

from abaw_cli.data.demo.generate import SCALES, generate_demo

__all__ = ["SCALES", "generate_demo"]
