"""Self-contained HTML reports: text, tables and figures embedded in one file."""

from oncoscale.report.html import Report, figure_to_data_uri

__all__ = ["Report", "figure_to_data_uri"]
