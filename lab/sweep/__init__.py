"""Hyperparameter sweeps: a sweep file, an optuna study, trials run through the queue.

:mod:`lab.sweep.spec` reads and checks sweep files, :mod:`lab.sweep.search`
holds the optuna study, sampler, pruner and the divergence rule,
:mod:`lab.sweep.driver` runs trials as queue entries and prunes them,
:mod:`lab.sweep.report` says what the sweep found.
"""
