"""Both BIDS validators on the demo release, the demo ``isyb deface`` output and a release
of real scans: 0 errors.

The legacy npm ``bids-validator@1.15.0`` and the schema-based ``bids-validator-deno``
(PyPI) are run on a 1-subject phantom dataset with every modality the demo makes
(T1w, BOLD, DWI, pCASL), released (the run's shared conftest ``modalities_release``,
``--skip derive``) and defaced in dataset mode, and on the run's shared release of real
scans (conftest ``real_release``). The warnings that remain are the documented ones (README,
"Validating a release"); a new kind of warning fails the test so that the list stays true.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from isyb.deface.dataset import deface_dataset
from isyb.deface.engine import DefaceOptions

#: Warnings the README explains (phantom sidecars lack scanner details, the demo has one
#: author and a one-line README, dataset_description has no HEDVersion...).
LEGACY_WARNINGS = {"INCONSISTENT_PARAMETERS", "TOO_FEW_AUTHORS", "README_FILE_SMALL",
                   "PULSE_SEQUENCE_DETAILS_MISSING", "FLIP_ANGLE_MISSING"}
DENO_WARNINGS = {"JSON_KEY_RECOMMENDED", "SIDECAR_KEY_RECOMMENDED", "README_FILE_SMALL",
                 "TOO_FEW_AUTHORS", "NIFTI_UNIT"}
#: And on the real release: the real pCASL run as the scanner wrote it (its header and its
#: sidecar), and only sub-01 has an ASL run.
REAL_WARNINGS = {"NIFTI_PIXDIM", "TOTAL_ACQUIRED_VOLUMES_NOT_CONSISTENT", "INCONSISTENT_SUBJECTS"}


def legacy(dataset: Path) -> tuple[list[str], set[str]]:
    """Error and warning keys of ``bids-validator`` 1.x."""
    command = shutil.which("bids-validator")
    if command is None:
        pytest.skip("the legacy BIDS validator is not installed (npm install -g "
                    "bids-validator@1.15.0)")
    run = subprocess.run([command, str(dataset), "--json"], capture_output=True, text=True,
                         timeout=600)
    issues = json.loads(run.stdout)["issues"]
    errors = [f"{e['key']}: {[f['file']['relativePath'] for f in e['files'] if f.get('file')]}"
              for e in issues["errors"]]
    return errors, {w["key"] for w in issues["warnings"]}


def deno(dataset: Path) -> tuple[list[str], set[str]]:
    """Error and warning codes of the schema-based ``bids-validator-deno`` (3.x)."""
    command = shutil.which("bids-validator-deno")
    if command is None:
        pytest.skip("bids-validator-deno is not installed (pip install -e '.[test]')")
    run = subprocess.run([command, str(dataset), "--json"], capture_output=True, text=True,
                         timeout=600)
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [f"{i['code']} {i.get('subCode') or ''}: {i.get('location')}" for i in issues
              if i["severity"] == "error"]
    return errors, {i["code"] for i in issues if i["severity"] == "warning"}


@pytest.fixture(scope="module")
def demo(modalities_release: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
         default_template) -> dict[str, Path]:
    """The run's shared all-modality release (conftest ``modalities_release``, which the
    release gate's tests check too) and its input defaced in dataset mode."""
    defaced = tmp_path_factory.mktemp("validators") / "defaced"
    deface_dataset(modalities_release["bids"], defaced, default_template, DefaceOptions(),
                   progress=False)
    return {"release": modalities_release["release"], "defaced": defaced}


@pytest.mark.slow
@pytest.mark.parametrize("validator", [legacy, deno], ids=["legacy-1.15", "deno-3"])
@pytest.mark.parametrize("output", ["release", "defaced"])
def test_zero_errors_and_only_documented_warnings(demo, validator, output: str) -> None:
    errors, warnings = validator(demo[output])
    assert errors == []
    allowed = LEGACY_WARNINGS if validator is legacy else DENO_WARNINGS
    assert warnings <= allowed, sorted(warnings - allowed)


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("validator", [legacy, deno], ids=["legacy-1.15", "deno-3"])
def test_real_release_has_zero_errors(real_release: dict, validator) -> None:
    """The run's shared release of real scans (conftest ``real_release``, which
    tests/app/test_release.py checks in detail): the real pCASL run, two real T1w heads,
    their derived maps, and a subject whose corrupt T1w failed."""
    errors, warnings = validator(real_release["release"])
    assert errors == []
    allowed = (LEGACY_WARNINGS if validator is legacy else DENO_WARNINGS) | REAL_WARNINGS
    assert warnings <= allowed, sorted(warnings - allowed)
