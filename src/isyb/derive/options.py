"""Settings of ``isyb derive``: the metrics, their units, the template space, the options record."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from isyb.errors import InputError

#: Every metric ``isyb derive`` computes, in output order.
METRICS = ("alff", "falff", "reho", "vmhc", "fa", "md", "cbf")
#: Metrics computed from resting BOLD.
BOLD_METRICS = ("alff", "falff", "reho", "vmhc")
#: Per-subject anatomical maps of ``--anatomy`` that the group level averages too.
ANATOMY_MAPS = ("thickness",)
#: Units of each metric (figure labels).
UNITS = {"alff": "a.u.", "falff": "ratio", "reho": "Kendall's W", "vmhc": "Fisher z",
         "fa": "FA", "md": "mm²/s", "cbf": "ml/100 g/min", "thickness": "mm"}
#: BIDS space label of the default template (nilearn's ICBM 2009a symmetric).
DEFAULT_SPACE = "MNI152NLin2009aSym"


class DeriveInputError(InputError):
    """A dataset, option or template that ``isyb derive`` cannot use."""


@dataclass(frozen=True)
class DeriveOptions:
    """Settings of the participant level (they key the resume check)."""

    metrics: tuple[str, ...] = METRICS
    normalization: str = "SyN"
    reho_neighbours: int = 27
    n_dummy: int = 5
    vmhc_fwhm_mm: float = 6.0
    template: str | None = None
    space: str = DEFAULT_SPACE
    freesurfer_dir: str | None = None
    cbf_formula: str = "whitepaper"
    ge_scaling: tuple[float, float] | None = None
    convention: str = "ccs"
    anatomy: bool = False
    dti_fit: str = "OLS"

    def key(self) -> str:
        """A short digest of the options, stored in every record."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"alff,fa"`` -> ``("alff", "fa")``, in :data:`METRICS` order; unknown names are errors.

    >>> parse_metrics("fa, ALFF")
    ('alff', 'fa')
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise DeriveInputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                               f"choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)
