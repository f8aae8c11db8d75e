"""Head templates: where they come from and how they are made ready for use.

A template is a head image with the face in its field of view, plus a brain
mask and a face region. The built-in entries come from three places:

- the package itself (a default head that installs offline),
- TemplateFlow (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``), online or from
  a local TemplateFlow folder named by ``TEMPLATEFLOW_HOME``,
- public URLs checked against a SHA-256 digest (``CN200``, ``Chinese2020``);
  ``ISYB_TEMPLATE_MIRROR`` points these downloads at a local or private mirror.

Submodules:

- :mod:`isyb.templates.fetch`: downloads with digest checks, mirrors, trust on
  first use for digests that are not pinned, and TemplateFlow look-ups.
"""
