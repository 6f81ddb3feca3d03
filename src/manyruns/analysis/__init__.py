"""Population analyses: streaming reductions over blocks of runs.

Each is ``compute(pop, options) -> Result`` (:mod:`.contract`): ``ensemble.ensemble_curve``,
``neighbours.neighbours`` (the kernel of :mod:`.kernel`), ``knn.knn_evaluate``,
``pairs.pairs``, ``heldout.memorization``, ``heldout.influence``, ``heldout.cscore``,
``randomization.fit_curves``, ``zoo.predict_accuracy``; and, over a dataset rather than a
population, ``interpolation.interpolate_dataset``. See docs/architecture.md.
"""
