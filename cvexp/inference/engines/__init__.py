"""What runs ``cvexp.predict``'s model: the ``engine`` config group (conf/engine/).

- :class:`~cvexp.inference.engines.local.LocalPredictionEngine` (``engine=local``): this process, a
  ``DataLoader`` decoding images;
- :class:`~cvexp.inference.engines.ray.RayPredictionEngine` (``engine=ray``): a pool of Ray Data
  actors, each loading the model once, CPU or GPU each.
"""
