"""The paper's tables and figures from saved results: tables, plots, Markdown/CSV text, and the
model-side statistics (activation distances, histograms) that ``proact report`` reads."""
