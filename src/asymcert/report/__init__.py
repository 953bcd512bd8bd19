"""Reports: metrics over certificates, plots, and the Markdown/JSON writers."""

from asymcert.report.metrics import certified_accuracy, clean_accuracy, curve_grid

__all__ = ["certified_accuracy", "clean_accuracy", "curve_grid"]
