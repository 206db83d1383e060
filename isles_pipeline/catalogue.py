"""The static ISLES'24 case catalogue: case ids, shard paths and the dataset's columns.

The ids are known statically (the seed's fix for the PyArrow streaming hang): listing the repo
is never needed to know which cases exist, and nothing here touches the network.
"""

from __future__ import annotations

DEFAULT_REPO_ID = "hugging-science/isles24-stroke"
NUM_SHARDS = 149

# Sorted subject ids; shard i holds CASE_IDS[i] (one row per shard).
CASE_IDS: tuple[str, ...] = (
    "sub-stroke0001", "sub-stroke0002", "sub-stroke0003", "sub-stroke0004", "sub-stroke0005",
    "sub-stroke0006", "sub-stroke0007", "sub-stroke0008", "sub-stroke0009", "sub-stroke0010",
    "sub-stroke0011", "sub-stroke0012", "sub-stroke0013", "sub-stroke0014", "sub-stroke0015",
    "sub-stroke0016", "sub-stroke0017", "sub-stroke0019", "sub-stroke0020", "sub-stroke0021",
    "sub-stroke0022", "sub-stroke0025", "sub-stroke0026", "sub-stroke0027", "sub-stroke0028",
    "sub-stroke0030", "sub-stroke0033", "sub-stroke0036", "sub-stroke0037", "sub-stroke0038",
    "sub-stroke0040", "sub-stroke0043", "sub-stroke0045", "sub-stroke0047", "sub-stroke0048",
    "sub-stroke0049", "sub-stroke0052", "sub-stroke0053", "sub-stroke0054", "sub-stroke0055",
    "sub-stroke0057", "sub-stroke0062", "sub-stroke0066", "sub-stroke0068", "sub-stroke0070",
    "sub-stroke0071", "sub-stroke0073", "sub-stroke0074", "sub-stroke0075", "sub-stroke0076",
    "sub-stroke0077", "sub-stroke0078", "sub-stroke0079", "sub-stroke0080", "sub-stroke0081",
    "sub-stroke0082", "sub-stroke0083", "sub-stroke0084", "sub-stroke0085", "sub-stroke0086",
    "sub-stroke0087", "sub-stroke0088", "sub-stroke0089", "sub-stroke0090", "sub-stroke0091",
    "sub-stroke0092", "sub-stroke0093", "sub-stroke0094", "sub-stroke0095", "sub-stroke0096",
    "sub-stroke0097", "sub-stroke0098", "sub-stroke0099", "sub-stroke0100", "sub-stroke0101",
    "sub-stroke0102", "sub-stroke0103", "sub-stroke0104", "sub-stroke0105", "sub-stroke0106",
    "sub-stroke0107", "sub-stroke0108", "sub-stroke0109", "sub-stroke0110", "sub-stroke0111",
    "sub-stroke0112", "sub-stroke0113", "sub-stroke0114", "sub-stroke0115", "sub-stroke0116",
    "sub-stroke0117", "sub-stroke0118", "sub-stroke0119", "sub-stroke0133", "sub-stroke0134",
    "sub-stroke0135", "sub-stroke0136", "sub-stroke0137", "sub-stroke0138", "sub-stroke0139",
    "sub-stroke0140", "sub-stroke0141", "sub-stroke0142", "sub-stroke0143", "sub-stroke0144",
    "sub-stroke0145", "sub-stroke0146", "sub-stroke0147", "sub-stroke0148", "sub-stroke0149",
    "sub-stroke0150", "sub-stroke0151", "sub-stroke0152", "sub-stroke0153", "sub-stroke0154",
    "sub-stroke0155", "sub-stroke0156", "sub-stroke0157", "sub-stroke0158", "sub-stroke0159",
    "sub-stroke0161", "sub-stroke0162", "sub-stroke0163", "sub-stroke0164", "sub-stroke0165",
    "sub-stroke0166", "sub-stroke0167", "sub-stroke0168", "sub-stroke0169", "sub-stroke0170",
    "sub-stroke0171", "sub-stroke0172", "sub-stroke0173", "sub-stroke0174", "sub-stroke0175",
    "sub-stroke0176", "sub-stroke0177", "sub-stroke0178", "sub-stroke0179", "sub-stroke0180",
    "sub-stroke0181", "sub-stroke0182", "sub-stroke0183", "sub-stroke0184", "sub-stroke0185",
    "sub-stroke0186", "sub-stroke0187", "sub-stroke0188", "sub-stroke0189",
)

NIFTI_COLUMNS: tuple[str, ...] = (
    "ncct", "cta", "ctp", "tmax", "mtt", "cbf", "cbv",
    "dwi", "adc", "lesion_mask", "lvo_mask", "cow_segmentation",
)
CLINICAL_FLOAT_COLUMNS: tuple[str, ...] = ("age", "nihss_admission", "mrs_admission", "mrs_3month")
# Every column of a shard, in file order.
ALL_COLUMNS: tuple[str, ...] = ("subject_id", *NIFTI_COLUMNS, *CLINICAL_FLOAT_COLUMNS, "sex")

# The modalities the pipeline reads; dwi, adc and lesion_mask are adjacent in the file.
IMAGE_COLUMNS: tuple[str, ...] = ("dwi", "adc", "lesion_mask")
NEEDED_COLUMNS: tuple[str, ...] = ("subject_id", *IMAGE_COLUMNS)

# A shard footer (parquet key-value metadata) key the real dataset does not have: the project's
# synthetic replicas write it (JSON: ``synthetic``, ``grid``, ``seed``) and the reader records it
# with the case, so that a report on replica data says that the data are synthetic.
REPLICA_KEY = "isles_pipeline.replica"

_INDEX = {case_id: i for i, case_id in enumerate(CASE_IDS)}


class UnknownCaseError(KeyError):
    """A case id that is not one of the 149 ISLES'24 cases."""

    def __str__(self) -> str:
        near = " and ".join(nearest_case_ids(str(self.args[0])))
        return f"unknown ISLES'24 case id {self.args[0]!r}; the nearest valid ids are {near}"


def nearest_case_ids(case_id: str) -> list[str]:
    """The catalogue ids on either side of ``case_id``'s number (sub-stroke0018 lies in a gap:
    sub-stroke0017 and sub-stroke0019), or the closest spellings when it has no number."""
    digits = "".join(ch for ch in case_id if ch.isdigit())
    if not digits:
        import difflib

        return difflib.get_close_matches(case_id, CASE_IDS, n=2, cutoff=0.0)
    number = int(digits)
    below = [c for c in CASE_IDS if int(c[-4:]) < number][-1:]
    above = [c for c in CASE_IDS if int(c[-4:]) > number][:1]
    return below + above


def shard_index(case_id: str) -> int:
    try:
        return _INDEX[case_id]
    except KeyError:
        raise UnknownCaseError(case_id) from None


def shard_path(case_id: str) -> str:
    """Path of the case's shard inside the dataset repo."""
    return f"data/train-{shard_index(case_id):05d}-of-{NUM_SHARDS:05d}.parquet"


def case_ranges(case_ids) -> str:
    """The ids for a person, runs of consecutive catalogue cases shortened: ``sub-stroke0001 to
    sub-stroke0004, sub-stroke0009`` (unknown ids are listed as they are, after the others)."""
    known = sorted({c for c in case_ids if c in _INDEX}, key=_INDEX.__getitem__)
    runs: list[list[str]] = []
    for case_id in known:
        if runs and _INDEX[case_id] == _INDEX[runs[-1][-1]] + 1:
            runs[-1].append(case_id)
        else:
            runs.append([case_id])
    parts = [run[0] if len(run) == 1 else f"{run[0]}, {run[1]}" if len(run) == 2 else f"{run[0]} to {run[-1]}" for run in runs]
    return ", ".join(parts + sorted({str(c) for c in case_ids if c not in _INDEX})) or "none"
