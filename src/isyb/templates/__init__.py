"""Head templates: where they come from and how they are made ready for use.

A template is a head image with the face in its field of view, plus a brain
mask and a face region. The built-in entries come from three places:

- the package itself (a default head that installs offline),
- TemplateFlow (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``), online or from
  a local TemplateFlow folder named by ``TEMPLATEFLOW_HOME``,
- public URLs checked against a pinned digest (``CN200``, ``Chinese2020``: the
  Git blob ids of their zuoxinian/CCS copies); ``ISYB_TEMPLATE_MIRROR`` points
  these downloads at a local or private mirror.

Prepared files are trusted only with the SHA-256 recorded when they were
prepared (:mod:`isyb.templates.registry`).

Submodules:

- :mod:`isyb.templates.fetch`: downloads with SHA-256 and Git blob id checks,
  mirrors, trust on first use for files with no pin, and TemplateFlow look-ups.
- :mod:`isyb.templates.verify`: TemplateFlow files checked against the digests
  of their git-annex keys (or a local pin list), and ``.npz`` caches kept with
  a SHA-256 sidecar.
"""
