"""`abaw predict`: videos, images and ABAW test lists -> per-frame affect tables and submissions."""
