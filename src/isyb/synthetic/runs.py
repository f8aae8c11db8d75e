"""Synthetic resting BOLD, DWI and ASL runs of a phantom head, with known truth.

They extend the demo dataset (``isyb demo --modalities``) so that ``isyb
derive`` runs end to end without downloads, and they give the derive tests a
ground truth. Each run is built on the same world frame as the subject's
phantom T1w (same head shape, same origin shift), at a coarse functional
resolution, from the phantom's exact tissue labels:

* **BOLD** (:func:`rest_bold`): a T2*-like baseline (:data:`isyb.synthetic.epi.EPI_INTENSITIES`)
  modulated in grey matter by a left-right *symmetric* network signal plus
  spatially smooth local fluctuations, both band-limited to 0.01-0.08 Hz;
  white-matter and CSF signals of their own (the nuisance regressors must find
  them); a linear drift; ``n_dummy`` non-steady-state volumes at the start;
  white noise.
* **DWI** (:func:`diffusion`): the tensor model ``S = S0 exp(-b g^T D g)``
  with known eigenvalues per tissue (white matter anisotropic along x, grey
  matter nearly isotropic, CSF free water), Rician noise.
* **ASL** (:func:`pcasl`): M0 volumes and control/label pairs whose
  difference gives a known CBF (grey matter 60, white matter 22
  ml/100 g/min) through :func:`isyb.derive.cbf.cbf_map` itself inverted, so
  the truth holds for the formula's exact conventions.

Intensities are arbitrary units; times in seconds; b in s/mm^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from isyb.synthetic.epi import EPI_INTENSITIES
from isyb.synthetic.phantom import Label, Phantom, make_phantom

#: Field of view (mm) and centre of the functional runs: the brain and the
#: top of the face, as a typical EPI slab.
FUNCTIONAL_FOV_MM = (184.0, 216.0, 148.0)
FUNCTIONAL_CENTRE_MM = (0.0, 4.0, 22.0)
#: True CBF (ml/100 g/min) of grey and white matter in :func:`pcasl`.
TRUE_CBF = {Label.GM: 60.0, Label.WM: 22.0}
#: Tensor eigenvalues (mm^2/s) per tissue in :func:`diffusion`; the first is
#: along x for white matter.
TRUE_EIGENVALUES = {Label.WM: (1.7e-3, 0.3e-3, 0.3e-3), Label.GM: (0.9e-3, 0.75e-3, 0.7e-3),
                    Label.CSF: (3.0e-3, 3.0e-3, 3.0e-3)}
OTHER_TISSUE_DIFFUSIVITY = 1.0e-3
DWI_S0 = {Label.CSF: 220.0, Label.GM: 130.0, Label.WM: 100.0, Label.EYES: 200.0}
OTHER_S0 = 60.0


@dataclass(frozen=True)
class Geometry:
    """A phantom head's shape (mm) and its origin shift (mm), as in :mod:`isyb.synthetic.demo`."""

    length: float = 190.0
    width: float = 150.0
    height: float = 225.0
    origin_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _phantom(geometry: Geometry, voxel_mm: float, intensities: dict | None = None) -> Phantom:
    return make_phantom(voxel_size=voxel_mm, length=geometry.length, width=geometry.width,
                        height=geometry.height, fov_mm=FUNCTIONAL_FOV_MM,
                        fov_center_mm=FUNCTIONAL_CENTRE_MM, noise_sd=0.0,
                        intensities=intensities)


def _affine(phantom: Phantom, geometry: Geometry) -> np.ndarray:
    affine = phantom.affine.copy()
    affine[:3, 3] += np.asarray(geometry.origin_shift_mm, dtype=float)
    return affine


def band_limited(n: int, tr: float, rng: np.random.Generator, *, low: float = 0.01,
                 high: float = 0.08, size: int = 1) -> np.ndarray:
    """``size`` independent unit-SD signals of ``n`` samples with power only in [low, high] Hz."""
    spectrum = np.fft.rfft(rng.normal(size=(size, n)), axis=1)
    freqs = np.fft.rfftfreq(n, tr)
    spectrum[:, (freqs < low) | (freqs > high)] = 0.0
    signals = np.fft.irfft(spectrum, n, axis=1)
    return signals / signals.std(axis=1, keepdims=True)


@dataclass(frozen=True)
class BoldRun:
    series: np.ndarray
    affine: np.ndarray
    tr: float
    labels: np.ndarray
    network: np.ndarray


def rest_bold(geometry: Geometry = Geometry(), *, voxel_mm: float = 4.0, n_volumes: int = 125,
              tr: float = 2.0, n_dummy: int = 5, seed: int = 0) -> BoldRun:
    """A resting-state run (float32 ``(x, y, z, t)``, RAS) of the phantom; see the module doc.

    Grey matter carries 2 % of symmetric network signal and 1.5 % of local
    fluctuations (white noise smoothed with a 1-voxel Gaussian in space, then
    band-limited), white matter and CSF 1 % each of their own signals; every
    head voxel drifts by 1 % over the run and has 0.5 % white noise. The
    first ``n_dummy`` volumes are brighter (T1 not yet at steady state).
    """
    rng = np.random.default_rng(seed)
    phantom = _phantom(geometry, voxel_mm, EPI_INTENSITIES)
    base = ndimage.gaussian_filter(phantom.image.astype(np.float32), 0.5)
    labels = phantom.labels
    gm, wm, csf = labels == Label.GM, labels == Label.WM, labels == Label.CSF
    network, wm_signal, csf_signal = band_limited(n_volumes, tr, rng, size=3)
    local = rng.normal(size=(n_volumes, *base.shape)).astype(np.float32)
    local = ndimage.gaussian_filter(local, (0, 1.0, 1.0, 1.0))
    spectrum = np.fft.rfft(local, axis=0)
    freqs = np.fft.rfftfreq(n_volumes, tr)
    spectrum[(freqs < 0.01) | (freqs > 0.08)] = 0.0
    local = np.fft.irfft(spectrum, n_volumes, axis=0)
    local /= local[:, gm].std() + 1e-12
    modulation = np.zeros((n_volumes, *base.shape), dtype=np.float32)
    modulation[:, gm] = 0.02 * network[:, None] + 0.015 * local[:, gm]
    modulation[:, wm] = 0.01 * wm_signal[:, None]
    modulation[:, csf] = 0.01 * csf_signal[:, None]
    drift = np.linspace(0.0, 0.01, n_volumes, dtype=np.float32)
    series = base[None] * (1.0 + modulation + drift[:, None, None, None])
    head = base > 0.05 * base.max()
    series += (0.005 * base[head].mean()
               * rng.normal(size=series.shape)).astype(np.float32) * head[None]
    series[:n_dummy] *= (1.0 + 0.5 * np.exp(-np.arange(n_dummy, dtype=np.float32)))[:, None,
                                                                                    None, None]
    return BoldRun(np.moveaxis(series, 0, -1).astype(np.float32), _affine(phantom, geometry),
                   tr, labels, network)


def gradient_directions(n: int) -> np.ndarray:
    """``n`` unit vectors spread over a hemisphere (golden-angle spiral), shape ``(n, 3)``."""
    k = np.arange(n) + 0.5
    z = 1.0 - k / n
    phi = k * np.pi * (3.0 - np.sqrt(5.0))
    r = np.sqrt(1.0 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass(frozen=True)
class DwiRun:
    series: np.ndarray
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    labels: np.ndarray


def diffusion(geometry: Geometry = Geometry(), *, voxel_mm: float = 4.0, n_b0: int = 2,
              n_directions: int = 12, b_value: float = 1000.0, noise_sd: float = 2.0,
              seed: int = 0) -> DwiRun:
    """A DWI run: ``n_b0`` b=0 volumes then ``n_directions`` at ``b_value`` (s/mm^2).

    Tissues get the eigenvalues of :data:`TRUE_EIGENVALUES` (white matter's
    principal direction along x), other head tissue isotropic
    :data:`OTHER_TISSUE_DIFFUSIVITY`; S0 from :data:`DWI_S0`. Rician noise of
    ``noise_sd`` in each of the real and imaginary channels.
    """
    rng = np.random.default_rng(seed)
    phantom = _phantom(geometry, voxel_mm)
    labels = phantom.labels
    head = labels != Label.BACKGROUND
    s0 = np.where(head, OTHER_S0, 0.0)
    for label, value in DWI_S0.items():
        s0[labels == label] = value
    directions = gradient_directions(n_directions)
    bvecs = np.vstack([np.zeros((n_b0, 3)), directions])
    bvals = np.concatenate([np.zeros(n_b0), np.full(n_directions, b_value)])
    attenuation = np.ones((*labels.shape, bvals.size))
    other = head.copy()
    for label, (l1, l2, l3) in TRUE_EIGENVALUES.items():
        inside = labels == label
        other &= ~inside
        tensor = np.diag([l1, l2, l3])
        adc = np.einsum("ni,ij,nj->n", bvecs, tensor, bvecs)
        attenuation[inside] = np.exp(-bvals * adc)
    attenuation[other] = np.exp(-bvals * OTHER_TISSUE_DIFFUSIVITY)
    clean = s0[..., None] * attenuation
    noisy = np.hypot(clean + rng.normal(0.0, noise_sd, clean.shape),
                     rng.normal(0.0, noise_sd, clean.shape))
    return DwiRun(noisy.astype(np.float32), _affine(phantom, geometry), bvals, bvecs, labels)


@dataclass(frozen=True)
class AslRun:
    series: np.ndarray
    affine: np.ndarray
    volume_types: list[str]
    metadata: dict
    cbf: np.ndarray
    labels: np.ndarray


#: BIDS-ASL sidecar fields of :func:`pcasl` (single-PLD 3-D pCASL, M0 included).
PCASL_METADATA = {"ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8,
                  "LabelingDuration": 1.8, "M0Type": "Included", "MRAcquisitionType": "3D",
                  "BackgroundSuppression": False, "RepetitionTimePreparation": 6.0,
                  "RepetitionTime": 6.0, "MagneticFieldStrength": 3, "Manufacturer":
                  "isyb phantom", "PulseSequenceType": "3D GRASE", "LabelingEfficiency": 0.85,
                  "VascularCrushing": False, "AcquisitionVoxelSize": [4.0, 4.0, 4.0],
                  "LabelingLocationDescription": "phantom", "EchoTime": 0.0137}


def pcasl(geometry: Geometry = Geometry(), *, voxel_mm: float = 4.0, n_m0: int = 2,
          n_pairs: int = 10, noise_fraction: float = 0.002, seed: int = 0) -> AslRun:
    """A pCASL run with ``n_m0`` M0 volumes then ``n_pairs`` control/label pairs.

    The perfusion-weighted difference is made so that
    :func:`isyb.derive.cbf.asl_cbf` on the noise-free run returns
    :data:`TRUE_CBF` exactly (grey and white matter; 0 elsewhere). Noise:
    Gaussian, ``noise_fraction`` of the mean M0 of the head, per volume.
    """
    from isyb.derive.cbf import cbf_map, m0_recovery_factor, read_parameters

    rng = np.random.default_rng(seed)
    metadata = dict(PCASL_METADATA)
    metadata["AcquisitionVoxelSize"] = [voxel_mm] * 3
    phantom = _phantom(geometry, voxel_mm, {**EPI_INTENSITIES, Label.GM: 130.0,
                                            Label.WM: 100.0, Label.CSF: 160.0})
    labels = phantom.labels
    m0 = phantom.image.astype(np.float64)
    truth = np.zeros(labels.shape)
    for label, value in TRUE_CBF.items():
        truth[labels == label] = value
    params = read_parameters(metadata)
    m0_fully_relaxed = m0 / m0_recovery_factor(params.m0_repetition_time)
    per_unit = cbf_map(np.ones_like(m0), m0_fully_relaxed, params)
    delta_m = np.divide(truth, per_unit, out=np.zeros_like(truth), where=per_unit > 0)
    control = m0 * 0.9
    volumes = [m0] * n_m0
    types = ["m0scan"] * n_m0
    for _ in range(n_pairs):
        volumes += [control, control - delta_m]
        types += ["control", "label"]
    series = np.stack(volumes, axis=-1)
    sd = noise_fraction * m0[labels != Label.BACKGROUND].mean()
    series = series + rng.normal(0.0, sd, series.shape) * (m0 > 0)[..., None]
    return AslRun(series.astype(np.float32), _affine(phantom, geometry), types, metadata,
                  truth, labels)
