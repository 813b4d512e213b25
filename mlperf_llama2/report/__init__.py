"""Run reporting: live progress, per-sample timings, the end-of-run summary and plots."""
