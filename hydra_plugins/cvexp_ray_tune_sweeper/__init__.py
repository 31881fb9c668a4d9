"""cvexp's Ray Tune sweeper for Hydra (``hydra/sweeper=ray_tune``; presets ``sweeper=asha``, ``sweeper=optuna_asha``).

Hydra finds it because ``hydra_plugins`` is a namespace package (no ``__init__.py`` at that level):
every module under it is imported when Hydra scans for plugins, which registers the config
(:mod:`.config`) and the :class:`~.ray_tune_sweeper.RayTuneSweeper` class. The work is done in
:mod:`cvexp.tuning`, imported only when a sweep runs, so ``--help`` stays fast.
"""
