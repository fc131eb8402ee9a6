"""Studies built on the distillation core: the few-label study and the
demo, temperature/alpha sweeps, calibration, reporting (plots and tables),
resumable run directories and export of a distilled student."""
