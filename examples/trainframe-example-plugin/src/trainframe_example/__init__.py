"""An example trainframe plugin; everything it adds is in ``trainframe_example.plugin``."""

__version__ = "0.1.0"
