"""The ``mcvae`` command line: a thin layer over models (and workers, service) with no logic of its own."""
