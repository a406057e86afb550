"""The experiments' library: ``results`` (one results file format, resumable), ``corpora``
(english, spanish, code with train / validation / test splits), ``models`` (matched model
families), ``training`` (optimizers and one training run), ``sweep`` (grids, spreads, choices),
``plots``, ``timing`` (the speed benchmarks' timer and options), ``cli``."""
