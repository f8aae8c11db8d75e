"""Derived metrics of the released data (``isyb derive``).

Numerics per modality (:mod:`~isyb.derive.timeseries` and
:mod:`~isyb.derive.preprocess`, :mod:`~isyb.derive.rfmri`,
:mod:`~isyb.derive.vmhc`, :mod:`~isyb.derive.dti`, :mod:`~isyb.derive.cbf`,
:mod:`~isyb.derive.surface`), registration (:mod:`~isyb.derive.normalize`),
group maps (:mod:`~isyb.derive.group`) and the dataset mode: its settings
(:mod:`~isyb.derive.options`), the subject's anatomy
(:mod:`~isyb.derive.anatomy`), one processor per run type
(:mod:`~isyb.derive.processors`) and the orchestration
(:mod:`~isyb.derive.dataset`).
"""
