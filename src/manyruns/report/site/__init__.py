"""The report: a static site of a population that opens from ``file://`` (:mod:`.build`)."""

from .build import Report, check_out, write_report

__all__ = ["Report", "check_out", "write_report"]
