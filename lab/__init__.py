"""lab: the terminal lab console and headless CLI built on the ``lm`` library."""

__version__ = "0.1.0"
