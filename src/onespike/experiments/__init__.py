"""The lab: the programs that produce the project's figures, built on the library.

- :mod:`onespike.experiments.train`: train the shipped ANNs (MNIST CNN, ResNet-20,
  VGG-11-BN) and write their weights with a JSON record.
- :mod:`onespike.experiments.sweep`: accuracy, spikes and energy over phases; the
  search ablation.
- :mod:`onespike.experiments.compare`: onespike beside rate, binary multi-spike,
  burst and time-to-first-spike codes.
- :mod:`onespike.experiments.gcn`: GCNs on Cora and CiteSeer, trained per seed,
  converted and tabulated.

These modules use the library (``onespike.convert``, ``onespike.evaluate``,
``onespike.cost``, ...); nothing in the library imports them
(``tests/test_layout.py`` checks it). Run them as ``python -m
onespike.experiments.NAME`` or through the ``onespike`` command line.
"""
