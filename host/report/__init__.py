"""`hadmc report DIR`: a self-contained report.html (plots embedded) from a search run directory."""

from host.report.html import ReportError, build_report, pareto_front

__all__ = ["ReportError", "build_report", "pareto_front"]
