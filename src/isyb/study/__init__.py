"""The template-effect study: deface a cohort with several templates, compare with statistics."""
