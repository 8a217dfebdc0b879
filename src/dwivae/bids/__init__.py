"""Whole BIDS datasets: find the scans (pybids), denoise them on Dask distributed with one model per
protocol, and summarise them on one page. Above every other layer but the command line."""
