"""`hadmc report DIR`: a self-contained report.html (plots embedded) from a search run directory."""

from host.report.html import build_report
from host.report.load import ReportError
from host.report.plots import pareto_front

__all__ = ["ReportError", "build_report", "pareto_front"]
