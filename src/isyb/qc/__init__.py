"""Quality control of MRI scans (``isyb qc``): image quality metrics, exclusion rules, reports.

Each module holds plain functions on numpy arrays (plus voxel sizes in mm);
file input and output stay in the command line layer. :mod:`isyb.qc.anat`
has the metrics of structural (T1w, T2w) head scans: tissue segmentation, a
defacing-proof air mask, and SNR, Dietrich's SNR, CNR, FBER, EFC,
AFNI-classic FWHM, CJV and WM2MAX, with every difference from MRIQC stated
where the metric is defined. :mod:`isyb.qc.bold` has the metrics of BOLD
runs and :mod:`isyb.head.motion` their rigid head-motion estimation.
"""
