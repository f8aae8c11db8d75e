"""A simulated two-population cohort, to check that ``isyb study`` finds a template effect.

Simulation only: nothing here describes real populations. The cohort has two
head-shape populations that differ in the *face*, not in the whole head:

``ref``
    Faces as they come: the phantom's own face, or a real scan's own face.
``cn200``
    The same kinds of heads with the face reshaped by the linear part of the
    CAPIIO→CN200 matrix (``../shared/data/transforms/CAPIIO_to_CN200.mat``,
    diagonal about 1.05, 0.97, 0.92: wider, shallower, shorter), raised to the
    power ``strength`` so the difference can be made larger than the matrix's
    own few per cent.

Why only the face: a shape difference of the whole head by one affine matrix
is undone by the study's 12-dof affine registration, so it leaves no
template effect to find. Reshaping the face relative to the brain is a
difference that an affine map cannot undo, which is what a
population-specific template is for.

How the cohort is defaced (:func:`run_simulation`): with the ``template``
face-region mode (the registered template's own face plus a margin, like NRG
mask_face and pydeface; :mod:`isyb.templates.face`) and ``remove``
(pydeface-like), so that a subject's face reaching beyond the template's face
plus the margin is left in place and the NMI over the subject's evaluation
region drops. The default ``rule`` mode is generous enough to hold any face,
so the template's face shape hardly matters there (measured: no effect,
interaction F(1, 4) = 0.62, p = 0.47, before this mode existed). ``blur`` is
not the right probe either: it rebuilds the face along the registered
template's smoothed outline, so a shape-matched template changes the face
*less*, and NMI rewards the mismatched one. The simulation's margin,
:data:`SIMULATION_MARGIN_MM` (3 mm), is smaller than the deface default
(8 mm): the squared CAPIIO→CN200 matrix moves the face skin by a median
5 mm and up to 19 mm (the chin up, the nose tip back, the cheeks out), but
after isyb's 12-parameter registration of the whole head a subject's face
skin reaches at most about 8.5 mm beyond the mismatched template's face, 3-9 %
of it beyond 3 mm and 0.7-1.3 % beyond 6 mm (``benchmarks/face_shape_gap.py``),
which an 8 mm margin absorbs (measured on 8 phantoms: matched − mismatched NMI
from −0.002 to +0.001, in no consistent direction).

``isyb study --design isyb`` grows the template face region by 6 mm,
mask_face's own ROI enlargement (``round(6 * pixdim)`` voxels on the
descriptor's 1 mm heads; :mod:`isyb.study.study`), decided on fidelity
grounds before it was run here. On this cohort it does not show the
matched-template effect either (8 + 8 phantoms, 3 mm voxels, strength 2:
template × population F(1, 14) = 0.47, p = 0.50; template F(1, 14) = 0.26,
p = 0.62; the 8 mm margin gave F(1, 14) = 0.98, p = 0.34), while the same
design with the simulation's 3 mm margin does (F(1, 14) = 84.5,
p = 2.6e-07). Simulation only. Why (``benchmarks/face_shape_gap.py``;
benchmarks/README.md, "why ``--design isyb`` shows no matched-template effect
at 6 mm"): the template's face shape reaches NMI only through the subject's
skin beyond the registered template's face tissue plus the margin; the
registration absorbs much of a face-only reshaping and most skin lies inside
the template's face, so 3-9 % of the skin lies beyond 3 mm but only 0.7-1.3 %
beyond 6 mm. The more faithful reshaping, CN200 *relative to MNI152* (the
CAPIIO→CN200 matrix times the inverse of mask_face's CAPIIO→MNI152, the
comparison the descriptor made), leaves less beyond 6 mm (0.1 % and 0 %), and
any box-shaped ROI that holds the template's face plus the margin (mask_face's
landmark box) leaves out at most what isyb's shell does. So neither a more
faithful simulation nor a box would show the effect at 6 mm; the real CN200
head, which would tell how different real faces are after registration, is not
available here. The simulation keeps the squared matrix; ``reshape="cn200-vs-mni152"``
(:func:`reshape_matrix`, strength 1) runs the more faithful one: on 4 + 4 phantoms,
``--design isyb`` gave template × population F(1, 6) = 1.56, p = 0.26 at 6 mm, and
F(1, 6) = 4.83, p = 0.070 with the 3 mm margin (simulation only).

The face is reshaped by :func:`reshape_face`: a smooth blend between the
identity (at and behind the front of the brain) and the linear map (in the
face), so the brain and the back of the head are unchanged. Each subject
has its own head length, width and height (phantoms), its own face strength
(population strength plus Gaussian jitter) and its own noise: the individual
variation. One template per population is a noise-free phantom of the
default head size with that population's face and its exact brain mask.

All lengths are in millimetres, world coordinates RAS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import linalg, ndimage

from isyb import __version__
from isyb.io import Volume, atomic_path, load_volume, write_text
from isyb.synthetic.phantom import make_phantom

#: Direction (RAS unit vector) along which the face lies beyond the brain: anterior
#: and 30 degrees inferior, the normal of the deface face plane.
FACE_DIRECTION = np.array([0.0, np.cos(np.deg2rad(30.0)), -np.sin(np.deg2rad(30.0))])
#: Field of view (mm) and its centre for the simulated phantoms: room for the
#: largest head with its chin and nose.
FOV_MM = (220.0, 260.0, 290.0)
FOV_CENTRE_MM = (0.0, 10.0, -20.0)
POPULATIONS = ("ref", "cn200")


def load_fsl_matrix(path: str | Path) -> np.ndarray:
    """A 4x4 affine matrix stored as text (FSL ``.mat``: four rows of four numbers)."""
    matrix = np.loadtxt(path, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"{path}: expected a 4x4 matrix, got shape {matrix.shape}")
    return matrix


def matrix_power(linear: np.ndarray, strength: float) -> np.ndarray:
    """``linear ** strength`` for a 3x3 matrix near the identity (``expm(s * logm(L))``).

    ``strength`` 0 gives the identity, 1 the matrix itself, 2 the matrix
    applied twice.
    """
    log = linalg.logm(np.asarray(linear, dtype=float)[:3, :3])
    return np.real(linalg.expm(strength * np.real(log)))


def face_weight(shape: tuple[int, int, int], affine: np.ndarray, brain: np.ndarray, *,
                taper_mm: float = 20.0, reach_mm: float = 110.0,
                fade_mm: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Where the face is reshaped: a weight in 0..1 per voxel, and the anchor point (mm).

    ``t = p . FACE_DIRECTION`` is the distance of the world point ``p`` along
    the face direction. The anchor is the brain voxel with the largest ``t``
    (the front-lower edge of the frontal lobe); the weight is 0 for
    ``t <= t_anchor`` (the whole brain and everything behind or above it) and
    rises smoothly (smoothstep) to 1 at ``taper_mm`` beyond, which holds the
    eyes, nose, lips and chin. It falls back to 0 (smoothstep) between
    ``reach_mm`` and ``reach_mm + fade_mm`` from the anchor, so the lower neck
    and the edges of the field of view do not move.
    """
    ijk = np.argwhere(brain)
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    along = points @ FACE_DIRECTION
    anchor = points[int(np.argmax(along))]
    # Centre the anchor left-right on the brain, so the reshaping is symmetric.
    anchor = np.array([0.5 * (points[:, 0].min() + points[:, 0].max()), anchor[1], anchor[2]])
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    row = FACE_DIRECTION @ affine[:3, :3]
    t = (row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
         + row[2] * axes[2][None, None, :] + FACE_DIRECTION @ affine[:3, 3])
    ramp = np.clip((t - along.max()) / taper_mm, 0.0, 1.0)
    world = [affine[i, 0] * axes[0][:, None, None] + affine[i, 1] * axes[1][None, :, None]
             + affine[i, 2] * axes[2][None, None, :] + affine[i, 3] - anchor[i] for i in range(3)]
    distance = np.sqrt(world[0] ** 2 + world[1] ** 2 + world[2] ** 2)
    fade = 1.0 - np.clip((distance - reach_mm) / fade_mm, 0.0, 1.0)
    weight = ramp * ramp * (3.0 - 2.0 * ramp) * fade * fade * (3.0 - 2.0 * fade)
    return weight.astype(np.float32), anchor


def reshape_face(data: np.ndarray, affine: np.ndarray, brain: np.ndarray, linear: np.ndarray,
                 *, taper_mm: float = 20.0) -> np.ndarray:
    """``data`` (RAS array) with its face reshaped by the 3x3 ``linear`` about the anchor.

    The new image at world point ``p`` is the old one at
    ``a + (I + w(p) (linear^-1 - I)) (p - a)``, with ``a`` and ``w`` from
    :func:`face_weight`: where ``w`` is 1 the face is mapped by ``linear``
    about ``a``; where it is 0 (brain, cranium, back of the head) nothing
    moves. Trilinear interpolation.
    """
    weight, anchor = face_weight(data.shape, affine, brain, taper_mm=taper_mm)
    inverse_delta = np.linalg.inv(np.asarray(linear, dtype=float)) - np.eye(3)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in data.shape], indexing="ij")
    world = [affine[i, 0] * grids[0] + affine[i, 1] * grids[1] + affine[i, 2] * grids[2]
             + affine[i, 3] - anchor[i] for i in range(3)]
    source = [world[i] + weight * sum(float(inverse_delta[i, j]) * world[j] for j in range(3))
              + anchor[i] for i in range(3)]
    back = np.linalg.inv(affine)
    coords = [back[i, 0] * source[0] + back[i, 1] * source[1] + back[i, 2] * source[2]
              + back[i, 3] for i in range(3)]
    return ndimage.map_coordinates(np.asarray(data, dtype=np.float32), coords, order=1,
                                   mode="nearest")


def resample_iso(volume: Volume, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A RAS volume on an isotropic ``voxel_mm`` grid over the same extent (trilinear)."""
    zooms = volume.zooms
    shape = np.maximum(np.round(np.array(volume.shape) * zooms / voxel_mm).astype(int), 1)
    target = volume.affine.copy()
    target[:3, :3] = volume.affine[:3, :3] / zooms * voxel_mm
    # Keep the grid centred on the same world point.
    centre_old = volume.affine @ np.append((np.array(volume.shape) - 1) / 2.0, 1.0)
    centre_new = target @ np.append((shape - 1) / 2.0, 1.0)
    target[:3, 3] += (centre_old - centre_new)[:3]
    mapping = np.linalg.inv(volume.affine) @ target
    sigma = np.maximum(voxel_mm / zooms - 1.0, 0.0) / 2.0
    source = ndimage.gaussian_filter(volume.data, sigma) if np.any(sigma > 0) else volume.data
    data = ndimage.affine_transform(source.astype(np.float32), mapping[:3, :3],
                                    offset=mapping[:3, 3], output_shape=tuple(shape), order=1)
    return data, target


@dataclass(frozen=True)
class SimulatedSubject:
    """One subject of the simulated cohort (what ``participants.tsv`` records)."""

    label: str
    population: str
    source: str
    face_strength: float
    length_mm: float | None = None
    width_mm: float | None = None
    height_mm: float | None = None


def _save(data: np.ndarray, affine: np.ndarray, path: Path, dtype: type = np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


def phantom_head(*, strength: float, linear: np.ndarray, voxel_mm: float,
                 length: float = 190.0, width: float = 150.0, height: float = 225.0,
                 noise_sd: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A phantom head (image, RAS affine, exact brain mask) with its face reshaped.

    ``length``, ``width`` and ``height`` are the phantom's head dimensions in
    mm; the face is reshaped by ``linear ** strength`` (:func:`reshape_face`).
    """
    phantom = make_phantom(voxel_size=voxel_mm, length=length, width=width, height=height,
                           fov_mm=FOV_MM, fov_center_mm=FOV_CENTRE_MM, noise_sd=noise_sd,
                           seed=seed)
    brain = phantom.brain_mask
    image = phantom.image
    if strength != 0.0:
        image = reshape_face(image, phantom.affine, brain, matrix_power(linear, strength))
    return image, phantom.affine, brain


def real_head(path: Path, *, strength: float, linear: np.ndarray, voxel_mm: float,
              brain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A real head scan resampled to ``voxel_mm`` with its face reshaped; image and affine.

    The brain mask that anchors the reshaping comes from deepbet on the
    resampled image unless ``brain`` (on that grid) is given.
    """
    data, affine = resample_iso(load_volume(path), voxel_mm)
    if strength != 0.0:
        if brain is None:
            from isyb.head.brain import extract_brain

            brain = extract_brain(data, np.full(3, voxel_mm))
        data = reshape_face(data, affine, brain, matrix_power(linear, strength))
    return data, affine


def build_templates(out_dir: Path, linear: np.ndarray, *, strength: float,
                    voxel_mm: float = 2.0) -> dict[str, Path]:
    """One template per population: a noise-free default-size phantom with that face.

    Writes ``tpl-sim<population>_T1w.nii.gz`` and its exact
    ``_desc-brain_mask.nii.gz`` (found by ``isyb.templates.registry.resolve``)
    into ``out_dir``. Returns ``{population: head path}``.
    """
    paths = {}
    for population, power in zip(POPULATIONS, (0.0, strength), strict=True):
        image, affine, brain = phantom_head(strength=power, linear=linear, voxel_mm=voxel_mm,
                                            noise_sd=0.0)
        head = out_dir / f"tpl-sim{population}_T1w.nii.gz"
        _save(image, affine, head)
        _save(brain, affine, out_dir / f"tpl-sim{population}_desc-brain_mask.nii.gz", np.uint8)
        paths[population] = head
    return paths


def build_cohort(root: Path, linear: np.ndarray, *, phantoms_per_population: int = 4,
                 real_heads: list[Path] = (), strength: float = 2.0,
                 strength_sd: float = 0.25, shape_range: float = 0.06, voxel_mm: float = 3.0,
                 seed: int = 0) -> list[SimulatedSubject]:
    """Write the two-population cohort as a raw BIDS dataset into ``root``.

    Per population, ``phantoms_per_population`` phantoms, each with head
    length, width and height the defaults (190, 150, 225 mm) times a factor
    uniform in ``1 ± shape_range``, and a face strength of the population's
    strength (``ref`` 0, ``cn200`` ``strength``) plus Gaussian jitter of SD
    ``strength_sd``. Each path of ``real_heads`` gives one subject to *each*
    population (its own face for ``ref``, reshaped for ``cn200``, each with
    its own jitter), resampled to ``voxel_mm``. ``participants.tsv`` has a
    ``population`` column for ``isyb study --split-column population``.
    Returns the subjects.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    subjects: list[SimulatedSubject] = []
    index = 0
    for population, centre in zip(POPULATIONS, (0.0, strength), strict=True):
        for _ in range(phantoms_per_population):
            index += 1
            label = f"{index:02d}"
            factors = rng.uniform(1.0 - shape_range, 1.0 + shape_range, size=3)
            length, width, height = np.round(np.array([190.0, 150.0, 225.0]) * factors, 1)
            power = float(np.round(centre + rng.normal(0.0, strength_sd), 3))
            image, affine, _ = phantom_head(strength=power, linear=linear, voxel_mm=voxel_mm,
                                            length=length, width=width, height=height,
                                            seed=seed * 1000 + index)
            _save(image, affine, root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
            subjects.append(SimulatedSubject(label, population, "phantom", power,
                                             float(length), float(width), float(height)))
    brains: dict[Path, np.ndarray] = {}
    for path in real_heads:
        for population, centre in zip(POPULATIONS, (0.0, strength), strict=True):
            index += 1
            label = f"{index:02d}"
            power = float(np.round(centre + rng.normal(0.0, strength_sd), 3))
            if path not in brains:
                from isyb.head.brain import extract_brain

                data, _ = resample_iso(load_volume(path), voxel_mm)
                brains[path] = extract_brain(data, np.full(3, voxel_mm))
            image, affine = real_head(path, strength=power, linear=linear, voxel_mm=voxel_mm,
                                      brain=brains[path])
            _save(image, affine, root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
            subjects.append(SimulatedSubject(label, population, Path(path).name, power))
    description = {"Name": "isyb simulated two-population cohort", "BIDSVersion": "1.9.0",
                   "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "isyb.study.simulate", "Version": __version__}]}
    write_text(root / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    write_text(root / "README", "Simulated cohort (isyb.study.simulate): phantoms and "
               "resampled real heads, faces reshaped per population. Simulation only.\n")
    rows = ["participant_id\tpopulation\tsource\tface_strength\tlength_mm\twidth_mm\theight_mm"]
    for s in subjects:
        cells = [f"{v:g}" if v is not None else "n/a" for v in (s.length_mm, s.width_mm,
                                                                  s.height_mm)]
        rows.append("\t".join([f"sub-{s.label}", s.population, s.source,
                               f"{s.face_strength:g}", *cells]))
    write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    return subjects


#: Face reshapings of the cn200 population (:func:`reshape_matrix`).
RESHAPES = ("cn200", "cn200-vs-mni152")


def reshape_matrix(data_dir: Path, reshape: str = "cn200") -> np.ndarray:
    """The 4x4 matrix whose linear part (to the power ``strength``) reshapes cn200 faces.

    ``cn200``: the ISYB team's ``transforms/CAPIIO_to_CN200.mat`` (CN200's shape in
    the CAPIIO atlas's terms; the simulation's default, used squared). ``cn200-vs-mni152``:
    that matrix times the inverse of mask_face's ``transforms/mask_face/CAPIIO_to_mni152.mat``
    (both map the same atlas, so this is CN200's shape in MNI152's terms, the comparison the
    descriptor made; diagonal about 1.00, 0.92, 0.85), meant to be used once (strength 1).
    """
    matrix = load_fsl_matrix(Path(data_dir) / "transforms" / "CAPIIO_to_CN200.mat")
    if reshape == "cn200":
        return matrix
    if reshape == "cn200-vs-mni152":
        mni = load_fsl_matrix(Path(data_dir) / "transforms" / "mask_face" / "CAPIIO_to_mni152.mat")
        return matrix @ np.linalg.inv(mni)
    raise ValueError(f"unknown reshape {reshape!r}; use one of {', '.join(RESHAPES)}")


#: Margin (mm) of the template face region in the simulation: smaller than the
#: face-surface shifts of the squared CN200 matrix, which the 8 mm default absorbs.
SIMULATION_MARGIN_MM = 3.0

#: Printed and written next to every number the simulated study produces.
SIMULATION_NOTE = ("simulation only: these numbers describe the simulated cohort, "
                   "not real populations")


def run_simulation(data_dir: Path, out: Path, *, phantoms_per_population: int = 4,
                   real_heads: list[str] = (), strength: float = 2.0, voxel_mm: float = 3.0,
                   method: str = "remove", face_region: str = "template",
                   face_margin_mm: float = SIMULATION_MARGIN_MM, nprocs: int = 1,
                   seed: int = 0, dv: str = "nmi", detectors: bool = True, reid: bool = True,
                   isyb_design: bool = False, threads: int | None = None,
                   reshape: str = "cn200", log=None) -> dict:
    """Build the cohort and the templates under ``out`` and run ``isyb study`` on it.

    ``data_dir`` is the shared data folder (``transforms/CAPIIO_to_CN200.mat``
    and ``heads/<real_heads>``). The first study (``out/study``, design
    ``pingouin``) defaces every subject with ``method``, ``face_region`` and
    ``face_margin_mm`` (see the module docstring for the defaults) and the
    ``ref`` and ``cn200`` templates, with the populations as subsets. The
    second (``out/control``) uses ``ref`` and a byte-identical copy of it
    under another name, the negative control. With ``isyb_design``, a third
    (``out/isyb``) runs the descriptor's design as it stands (``--design
    isyb``: maskface, the template's face region with the design's margin,
    :data:`isyb.study.study.ISYB_FACE_MARGIN_MM`, type III statistics) on
    ``ref`` and ``cn200``, and a fourth
    (``out/isyb_margin``) the same design with the simulation's margin
    (``face_margin_mm`` :data:`SIMULATION_MARGIN_MM`). The later studies share
    the first one's work cache (brain masks, registrations). ``detectors``
    and ``reid`` switch the face checks (``--no-detectors``, ``--no-reid``);
    ``nprocs`` and ``threads`` are the executor's (:class:`isyb.executor.ExecutorOptions`);
    ``reshape`` picks the cn200 faces' matrix (:func:`reshape_matrix`).
    Returns ``out``, ``subjects``, ``main``, ``control``, with
    ``isyb_design`` ``isyb`` and ``isyb_margin`` (what :func:`isyb.study.study.run_study`
    returns), ``names`` (population -> template name) and ``templates``
    (population -> head path; ``refcopy`` the control's copy).
    """
    import shutil

    from isyb.executor import ExecutorOptions
    from isyb.study.study import StudyOptions, run_study
    from isyb.templates.registry import resolve

    linear = reshape_matrix(Path(data_dir), reshape)
    paths = build_templates(out / "templates", linear, strength=strength)
    subjects = build_cohort(out / "bids", linear, phantoms_per_population=phantoms_per_population,
                            real_heads=[Path(data_dir) / "heads" / name for name in real_heads],
                            strength=strength, voxel_mm=voxel_mm, seed=seed)
    copy = out / "templates" / "tpl-simrefcopy_T1w.nii.gz"
    shutil.copyfile(paths["ref"], copy)
    shutil.copyfile(out / "templates" / "tpl-simref_desc-brain_mask.nii.gz",
                    out / "templates" / "tpl-simrefcopy_desc-brain_mask.nii.gz")
    templates = {key: resolve(str(path)) for key, path in paths.items()}
    common = dict(dv=dv, split_column="population", note=SIMULATION_NOTE, detectors=detectors,
                  reid=reid)
    options = StudyOptions(design="pingouin", method=method, face_region=face_region,
                           face_margin_mm=face_margin_mm, **common)
    executor = ExecutorOptions(nprocs=nprocs, threads=threads)

    def study(name: str, chosen: list, chosen_options: StudyOptions) -> dict:
        folder = out / name
        if name != "study":  # the first study's work cache serves the others
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / "work").exists():
                (folder / "work").symlink_to(out / "study" / "work", target_is_directory=True)
        return run_study(out / "bids", folder, chosen, chosen_options, executor=executor,
                         progress=False, log=log)

    pair = [templates["ref"], templates["cn200"]]
    result = {"out": out, "subjects": subjects, "main": study("study", pair, options),
              "control": study("control", [templates["ref"], resolve(str(copy))], options),
              "names": {key: template.name for key, template in templates.items()},
              "templates": {**paths, "refcopy": copy}}
    if isyb_design:
        result["isyb"] = study("isyb", pair, StudyOptions(design="isyb", **common))
        result["isyb_margin"] = study("isyb_margin", pair, StudyOptions(
            design="isyb", face_margin_mm=SIMULATION_MARGIN_MM, **common))
    return result


def matched_differences(metrics, names: dict[str, str], dv: str = "nmi"):
    """Per subject: the DV with each template, and own-population minus other template.

    ``metrics`` is the study's tidy table (``subject``, ``subset``,
    ``template``, ``dv``), ``names`` maps ``ref``/``cn200`` to template names.
    """
    wide = metrics.pivot(index=["subject", "subset"], columns="template", values=dv)
    wide = wide.rename(columns={v: k for k, v in names.items()}).reset_index()
    wide.columns.name = None
    own = np.where(wide["subset"] == "ref", wide["ref"], wide["cn200"])
    other = np.where(wide["subset"] == "ref", wide["cn200"], wide["ref"])
    return wide.assign(matched_minus_mismatched=own - other)
