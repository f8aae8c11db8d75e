"""Quality control of MRI scans (``isyb qc``): image quality metrics, exclusion rules, reports.

The metrics are plain functions on numpy arrays (plus voxel sizes in mm);
files are read only at the entries :func:`isyb.qc.anat.qc_anat` and
:func:`isyb.qc.bold.qc_bold` (a path or an in-memory nibabel image) and in
the dataset mode (:mod:`isyb.qc.dataset`, :mod:`isyb.qc.report`).

* :mod:`isyb.qc.anat`: structural (T1w, T2w) metrics, SNR, Dietrich's SNR,
  CNR, FBER, EFC, AFNI-classic FWHM, CJV and WM2MAX, with every difference
  from MRIQC stated where the metric is defined; :mod:`isyb.qc.masks` their
  brain, head, tissue and defacing-proof air masks.
* :mod:`isyb.qc.functional`: BOLD metrics (FD, DVARS, GCOR, tSNR, SNR, FBER);
  :mod:`isyb.qc.bold` runs them on one run after :mod:`isyb.head.motion`'s
  rigid head-motion correction.
* :mod:`isyb.qc.rules`: exclusion rules; :mod:`isyb.qc.dataset` and
  :mod:`isyb.qc.report`: ``isyb qc BIDS_DIR OUT_DIR participant|group``.
"""
